"""Providers: what turns a job into audio or text (the embedded engines, later remote APIs)."""
