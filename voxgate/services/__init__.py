"""Services between the HTTP routes and the providers: routing, and later limits and metering."""
