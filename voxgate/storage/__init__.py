"""Persistence: the key and usage database (SQLAlchemy + Alembic) and the Redis counters."""
