"""zstag: zero-shot music classification and tagging.

The Python API (``zstag.tag``, ``zstag.embed``, ``zstag.load_model``; see ``zstag.api``) is imported on first
use, so that ``import zstag`` (every CLI start) stays free of numpy and torch.
"""

__version__ = "0.1.0"
__all__ = ["tag", "embed", "load_model", "__version__"]


def __getattr__(name: str):
    if name in ("tag", "embed", "load_model", "Tags", "Embedding"):
        from zstag import api

        return getattr(api, name)
    raise AttributeError(f"module 'zstag' has no attribute {name!r}")
