"""voxgate: a self-hostable, OpenAI-compatible audio API with embedded offline engines."""

__version__ = "0.1.0"
