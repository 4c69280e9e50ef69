"""OpenAI-compatible upstream providers (any audio API speaking OpenAI's wire format)."""
