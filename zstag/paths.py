"""Where zstag keeps its files (the user cache, the bundled models folder), how it writes them (atomic_write),
the guard that keeps a command from writing over its own inputs (check_output), file names in outputs
that stay valid UTF-8 and on one line whatever their bytes (valid_text, name_bytes, one_line), names
in zstag's own files stored losslessly (stored_name/read_name, put_name/get_name), and a
folder walk that no depth of folders can crash (walk)."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from zstag.errors import UsageError

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
    itself is replaced, so a file shared through links elsewhere is never changed. A user's file made
    read-only (follow_links; see read_only) is refused, as the shell's > refuses it: PermissionError. str is
    UTF-8; a list of bytes-like pieces is written one after the other (a large file, never joined in memory).
    A file replaced keeps its permission bits; a new one gets 0666 less the umask.
    """
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
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if follow_links and st is not None and read_only(st, target):
        raise PermissionError(errno.EACCES, "it is read-only", str(path))
    # A file replaced keeps its permissions (a private 0600); a new one gets 0666 less the umask, as from >.
    kept = stat.S_IMODE(st.st_mode) & 0o777 if st is not None else None
    fd, tmp = _temp_file(target.parent, f".{target.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_pieces(handle, pieces)
            handle.flush()
            _fsync(handle.fileno())
        if kept is not None:
            os.chmod(tmp, kept)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return path


def read_only(st: os.stat_result, path: str | os.PathLike) -> bool:
    """A regular file (st: its os.stat) that zstag must not replace: no write bit (chmod a-w), or not writable
    by this process. The bits count for root too, who may write anything: they say the user wants it kept."""
    return stat.S_ISREG(st.st_mode) and (not st.st_mode & 0o222 or not os.access(path, os.W_OK))


def _temp_file(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """(descriptor, path) of a new file in folder, created 0666 less the umask (mkstemp's 0600 would ignore the
    umask; reading the umask means setting it, which no thread may do)."""
    import secrets

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


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


# --- outputs that would replace inputs ----------------------------------------------------------


class OutputError(UsageError, ValueError):
    """An output check_output refuses; str(e) is one line naming it."""


class OutputIsInputError(OutputError):
    """An output that would replace one of the run's inputs; str(e) is one line naming both paths."""


class ReadOnlyOutputError(OutputError):
    """An output file the user made read-only (read_only): the shell's > would refuse to replace it too."""


@dataclass(frozen=True)
class Input:
    """A file or folder a command reads. whole: a folder read as a whole (a feature cache: every file in
    it is the cache's), so that nothing may be written anywhere inside it."""

    what: str  # how the error names it: "the input file", "the labels file", "the feature cache"
    path: str | os.PathLike
    whole: bool = False


def check_output(output: str | os.PathLike, option: str, inputs: Iterable[Input], *, folder: bool = False,
                 allowed: Iterable[str | os.PathLike] = ()) -> None:
    """OutputIsInputError when writing `output` (given as `option`) could replace one of `inputs`;
    ReadOnlyOutputError when it is a file the user made read-only (not for folder outputs).

    A file output is refused when it is an input, however spelled: a symbolic link to it, a hard link, a
    path through other folders (compared by os.stat's st_dev and st_ino, so an output that does not exist
    yet is no input); and when it lies, once its links are resolved, inside a folder read as a whole
    (Input.whole). Inside any other input folder (a corpus root, a folder of audio given to tag) a new
    file is fine: a report beside the audio replaces nothing the run reads, and the next run reads it
    only if it is audio. An existing output that is neither a file nor a folder (/dev/null, a FIFO) is
    written to, never replaced (atomic_write), so it is never refused.

    folder=True: `output` is a folder the command fills with files of its own (preprocess's feature
    cache, train's model folder). It is refused when it is an input, lies inside a folder read as a
    whole, or holds an input anywhere below it (by where the input's name is, its folder's links
    resolved), except the `allowed` paths: files the command reads back from its own folder (train's
    split.json).
    """
    inputs = list(inputs)
    st = _stat(output)
    if st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        for item in inputs:
            other = _stat(item.path)
            if other is not None and os.path.samestat(st, other):
                why = "the command writes its own files there" if folder else "it would be overwritten"
                raise OutputIsInputError(f"{output}: {option} is {item.what} {item.path} ({why})")
    places = {os.path.realpath(output), _entry(output)}
    for item in inputs:
        if item.whole and any(_inside(place, os.path.realpath(item.path)) for place in places):
            raise OutputIsInputError(f"{output}: {option} lies inside {item.what} {item.path} "
                                     "(every file there is read as data)")
    if folder and st is not None and stat.S_ISDIR(st.st_mode):
        root = os.path.realpath(output)
        exempt = {_entry(path) for path in allowed}
        parents: dict[str, str] = {}  # one realpath per folder, not per file: corpora have many files per folder
        for item in inputs:
            head, name = os.path.split(os.path.abspath(item.path))
            if head not in parents:
                parents[head] = os.path.realpath(head)
            where = os.path.join(parents[head], name)
            if _inside(where, root) and where not in exempt and os.path.lexists(where):  # "random:50:0" is no file
                raise OutputIsInputError(f"{output}: {option} holds {item.what} {item.path} "
                                         "(the command writes its own files there)")
    # Checked up front as atomic_write checks it at the end (the file this process's stdout goes to is written
    # through that descriptor, not replaced).
    if not folder and st is not None and read_only(st, output) and _standard_stream(Path(output)) is None:
        raise ReadOnlyOutputError(f"{output}: {option} is read-only (chmod u+w it to let zstag replace it)")


def check_distinct(outputs: dict[str, str | os.PathLike | None]) -> None:
    """OutputIsInputError when two of a command's outputs (option → path, None: not given) are one file:
    the second write would replace the first (compared as check_output does, and by resolved path for
    files that do not exist yet)."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        for other_option, other in given[:i]:
            a, b = _stat(path), _stat(other)
            same = os.path.samestat(a, b) if a is not None and b is not None else (
                os.path.realpath(path) == os.path.realpath(other))
            if same:
                raise OutputIsInputError(f"{path}: {option} is the {other_option} file {other} "
                                         "(one would overwrite the other)")


def _stat(path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name
        return None


def _entry(path) -> str:
    """Where the name `path` itself is (its folder's links resolved, not its own): what os.replace replaces."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), name)


def _inside(path: str, folder: str) -> bool:
    """path is folder or below it (both absolute and resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# --- file names in outputs ----------------------------------------------------------------------


def valid_text(text: str) -> str:
    """text as valid Unicode, so that its UTF-8 is valid: each byte of a file name that is not UTF-8
    (os.fsdecode's lone surrogates) as U+FFFD; text without such bytes is returned as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate os.fsdecode never makes
        return text.encode("utf-8", "replace").decode("utf-8")


def name_bytes(path: str) -> str | None:
    """None for a UTF-8 name; else the name's bytes percent-encoded (RFC 3986, "/" kept): ASCII and
    lossless, urllib.parse.unquote_to_bytes gives the bytes back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        from urllib.parse import quote

        return quote(os.fsencode(path), safe="/")
    return None


def name_from_bytes(quoted: str) -> str:
    """The name name_bytes encoded: its bytes, decoded as os.fsdecode decodes file names."""
    from urllib.parse import unquote_to_bytes

    if not isinstance(quoted, str):
        raise TypeError(f"percent-encoded name expected, found {type(quoted).__name__}")
    return os.fsdecode(unquote_to_bytes(quoted))


def stored_name(name: str) -> str | dict:
    """A name (track id, label) for a list in a JSON file, valid Unicode and lossless: a UTF-8 name as
    itself; else {"text": the name with U+FFFD (valid_text), "bytes": its bytes percent-encoded
    (name_bytes)}. read_name gives the name back, as os.fsdecode made it."""
    raw = name_bytes(name)
    return name if raw is None else {"text": valid_text(name), "bytes": raw}


def read_name(value) -> str:
    """The name stored_name stored (a string, or its {"text", "bytes"} object); TypeError or KeyError
    for anything else."""
    if isinstance(value, dict):
        return name_from_bytes(value["bytes"])
    if not isinstance(value, str):
        raise TypeError(f"a name must be a string, found {type(value).__name__}")
    return value


def put_name(record: dict, key: str, name: str) -> dict:
    """record[key] = the name as valid Unicode, and record[key + "_bytes"] = its bytes percent-encoded for
    a name that is not UTF-8 (the convention of tag's "path" / "path_bytes"); returns record."""
    record[key] = valid_text(name)
    raw = name_bytes(name)
    if raw is not None:
        record[key + "_bytes"] = raw
    return record


def get_name(record: dict, key: str) -> str:
    """The name put_name stored under key (a record without key + "_bytes" holds it as it is)."""
    raw = record.get(key + "_bytes")
    return record[key] if raw is None else name_from_bytes(raw)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(name: str) -> str:
    """A name for a table, on one line: control characters and line separators as Python escapes
    (\\n, \\x1b, \\u2028), a byte that is not UTF-8 as \\xNN."""
    def escape(match: re.Match) -> str:
        code = ord(match[0])
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            return f"\\x{code - 0xDC00:02x}"
        return match[0].encode("unicode_escape", "backslashreplace").decode("ascii")

    return _UNPRINTABLE.sub(escape, name)


# --- walking folders ----------------------------------------------------------------------------


def walk(top: str | os.PathLike, onerror: Callable[[OSError], None] | None = None,
         follow_links: bool = False) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(top, topdown=True, onerror, followlinks), without recursion: a tree thousands of folders
    deep cannot raise RecursionError (Python before 3.12 walks recursively, ~1,000 levels at most).

    Yields (folder, subfolder names, other names) before the subfolders, which are walked in the order
    the caller leaves them in the list (sort or prune it in place). A folder that cannot be listed goes
    to onerror and is skipped. Loops through links are the caller's to stop (follow_links=True).
    """
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()  # follows links, as os.walk
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry.name)
        except OSError as exc:  # opening or reading the folder
            if onerror is not None:
                onerror(exc)
            continue
        yield folder, dirs, files
        for name in reversed(dirs):  # popped in the list's order
            path = os.path.join(folder, name)
            if follow_links or not os.path.islink(path):
                stack.append(path)
