"""Where zstag keeps its files: the user cache and the bundled models folder."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "ZSTAG_CACHE_DIR"  # overrides the platform cache folder (tests point it at tmp_path)


def cache_dir() -> Path:
    """The cache folder: $ZSTAG_CACHE_DIR, else the platform's user cache folder for zstag.

    The folder is not created here; writers create it when they first write.
    """
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("zstag"))


def models_dir() -> Path:
    """The `models/` folder next to the `zstag` package (the repository's models folder)."""
    return Path(__file__).resolve().parent.parent / "models"
