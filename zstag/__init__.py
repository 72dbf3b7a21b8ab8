"""zstag: zero-shot music classification and tagging."""

__version__ = "0.1.0"
