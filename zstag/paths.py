"""Where zstag keeps its files: the user cache and the bundled models folder."""

from __future__ import annotations

import errno
import os
import sys
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
    """The shipped models: `zstag/models/` in an installed wheel (pyproject maps the repository's top-level
    `models/` there), else the `models/` folder beside the package (a source checkout or editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def atomic_write(path: str | os.PathLike, data: bytes | str | list, follow_links: bool = False) -> Path:
    """Write a file whole or not at all: a temporary file in the same folder, flushed to disk, then
    os.replace, then the folder flushed too.

    A crash, kill -9 or power cut leaves either the old file or the new one, never half of one (without
    the fsync before the rename, a power cut could leave the new name on an empty file). An existing path
    that is no regular file (a device such as /dev/null, a FIFO), directly or through links, is written to
    directly, and so is the file this process's stdout or stderr goes to (``-o /dev/stdout >> log``: the
    redirection's own append or truncation is kept). follow_links (a user's output file): a symbolic link
    is followed and its final target replaced, the link stays; otherwise (the project's own files) the link
    itself is replaced, so a file shared through links elsewhere is never changed. str is UTF-8; a list
    of bytes-like pieces is written one after the other (a large file, never joined in memory).
    """
    import tempfile

    path = Path(path)
    pieces = data if isinstance(data, list) else [data.encode("utf-8") if isinstance(data, str) else data]
    stream = _standard_stream(path)
    if stream is not None:
        _write_all(stream, pieces)
        return path
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: written to, never replaced
        with open(path, "wb") as handle:
            _write_pieces(handle, pieces)
        return path
    if follow_links:
        target = Path(os.path.realpath(path))  # a link's final target (the folder must exist: nothing is created)
    else:
        target = path
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_pieces(handle, pieces)
            handle.flush()
            _fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs, models and caches are ordinary files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return path


def _standard_stream(path: Path) -> int | None:
    """1 or 2 if path is the very file this process's stdout or stderr writes to, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for fd in (1, 2):
        try:
            if os.path.samestat(st, os.fstat(fd)):
                return fd
        except OSError:  # that descriptor is closed
            continue
    return None


def _write_pieces(handle, pieces: list) -> None:
    for piece in pieces:
        handle.write(piece)


def _write_all(fd: int, pieces: list) -> None:
    for stream in (sys.stdout, sys.stderr):  # what Python still buffers goes first
        if stream is not None:
            stream.flush()
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view:
            view = view[os.write(fd, view):]


def _fsync(fd: int) -> None:
    """os.fsync, except where the file system has none (some FUSE and network mounts): nothing to wait for."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in folder durable; best effort (some systems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def npy_bytes(array) -> bytes:
    """An array as the bytes of a .npy file (no pickled objects), for atomic_write."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
