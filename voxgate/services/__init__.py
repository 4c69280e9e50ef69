"""Between the HTTP routes and the providers: each request's one owner (relay), routing, metering,
keys and limits. Each takes what it uses, never the whole container."""
