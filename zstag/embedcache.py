"""The on-disk embedding cache shared by `zstag tag`, `eval`, `search` and `tag --write-tags`.

One SQLite file, ``cache_dir()/embeddings.sqlite`` in WAL mode. A row is keyed by (cache id: the model
id, + "+bf16" for bfloat16 rows; content digest, offset, max_seconds, pipeline version) and holds the
float32 joint-space embedding and the statistics as JSON. SQLite keeps no checksums of its pages, so a
byte flipped on disk inside a vector would read back as a valid embedding: each row's vector blob ends
with a CRC-32 of the row (`_check`), verified on every read; a row that fails it is a miss (the file is
embedded again and its row rewritten), with one notice. A row without one (written by an older zstag)
is read unchecked, as it was then. Each file's row is committed on its own, so a
killed run loses at most the files in flight and leaves the cache readable. A file whose bytes cannot
give audio (audio.ContentError: empty, corrupt, not audio, no samples, silent, too short) gets a row of
the same key in a second table, its error line without the path and keyed by the decoders too
(decoder_stamp), so a warm re-tag reports it without torch or decoding. Failures that may not happen
again (unreadable or changed file, decoder crash, no ffmpeg, "cannot embed") are never stored: the
caller (embeddings.py) decides what reaches store().

The content digest is SHA-256 over the whole file (and its size). Hashing costs ~1 ms per MB, far less
than decoding it (~100 ms per MB of mp3); hashing only the first/last MiB would miss edits in the
middle (re-encoded audio of equal size). A third table remembers (path, size, mtime_ns, ctime_ns,
inode) → digest, so a warm run only stats its files; any write to a file changes its ctime and forces
a rehash. Because rows are keyed by content, a copied, renamed or touched file still hits the cache.

A database SQLite calls corrupt is moved aside (*.damaged) and a new one started; any other cache error
is one notice (errors.notify: the caller's notice callback, else a ZstagWarning), once per cause and open
cache, and the run goes on without the row (a cache problem never loses a run's results).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zstag.errors import Notice, notify
from zstag.workers import default_workers

CACHE_FILE = "embeddings.sqlite"
DAMAGED_SUFFIX = ".damaged"  # a database SQLite calls corrupt is renamed to this, and a new one started
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # primary result codes (sqlite3.h)
PIPELINE_VERSION = 5  # bump when decoding, features or inference change, so that old rows stop matching
# 3: blocked STFT with a banded filterbank, GEMM musicnn front end, one torch thread per track (rounding-level)
# 4: a WAV/AIFF cut short on disk is a truncation error (it was embedded from what was left)
# 5: silent or too short audio is a content failure (audio.SILENT_PEAK, MIN_AUDIO_SECONDS; it was embedded)
HASH_CHUNK = 1 << 20
SQLITE_TIMEOUT_S = 30.0  # wait this long for another zstag process holding the write lock
BF16_CACHE_SUFFIX = "+bf16"  # appended to a model id in the cache: bfloat16 rows are other numbers (--bf16)
SAMPLE_CACHE_SUFFIX = "+sample="  # ... and this with N: embeddings of N seconds' windows (--sample-seconds N)
CHECK_BYTES = 4  # the CRC-32 after a row's float32 vector in its blob (_check)
DAMAGED_ROW = "a stored embedding is damaged (its checksum does not match)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    model_id TEXT, digest TEXT, start_s REAL, max_s REAL, version INTEGER,
    dim INTEGER NOT NULL, vector BLOB NOT NULL, stats TEXT,
    PRIMARY KEY (model_id, digest, start_s, max_s, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decode_failures (
    model_id TEXT, digest TEXT, start_s REAL, max_s REAL, version INTEGER, decoders TEXT, cause TEXT NOT NULL,
    PRIMARY KEY (model_id, digest, start_s, max_s, version, decoders)
) WITHOUT ROWID;
"""
# decode_failures: keyed by model id like embeddings, though a decode failure depends only on the front end.
# The id fixes the front end, so this is never wrong, and a front-end key would gain nothing: a model whose
# embeddings of a folder are cached has decoded that folder itself, its bad files included. Also keyed by
# the decoders (decoder_stamp): bytes one libsndfile or ffmpeg cannot read, another may.
KEY_MATCH = "model_id=? AND digest=? AND start_s=? AND max_s=? AND version=?"  # both tables' key


@functools.lru_cache(maxsize=1)
def decoder_stamp() -> str:
    """What decides whether bytes that failed to decode still fail: the soundfile package with the
    libsndfile its wheel carries, and the ffmpeg on PATH, each as (path, size, mtime) of its files. Stat
    calls only: no import of soundfile or importlib.metadata (a warm run stays ~15 ms faster). A system
    libsndfile that soundfile falls back to is not in it."""
    import importlib.util

    parts = []
    spec = importlib.util.find_spec("soundfile")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "_soundfile_data"
        libraries = sorted(f for f in bundled.iterdir() if "sndfile" in f.name) if bundled.is_dir() else []
        files = [Path(spec.origin)] + libraries
        parts += [_binary_stamp(str(f)) for f in files]
    ffmpeg = shutil.which("ffmpeg")
    parts.append(_binary_stamp(os.path.realpath(ffmpeg)) if ffmpeg else "no ffmpeg")
    return "; ".join(parts)


def _binary_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:?"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file's size and bytes, in hex (first 32 digits)."""
    with open(path, "rb") as handle:
        return stream_digest(handle, os.fstat(handle.fileno()).st_size)


def stream_digest(handle, size: int) -> str:
    """content_digest of what handle.read() gives (size bytes): also for files read through pyarrow.fs."""
    digest = hashlib.sha256()  # twice as fast as BLAKE2b where the CPU has SHA instructions
    digest.update(int(size).to_bytes(8, "little"))
    while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()[:32]


class EmbeddingCache:
    """The SQLite store of track embeddings and file digests (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, notice: Notice | None = None):
        """notice: where this cache's errors during the run are reported (errors.notify)."""
        self.path = Path(path)
        self.set_aside = False  # move_aside has run
        self.notice = notice
        self.noticed: set[str] = set()  # each cause reported once, not once per file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=SQLITE_TIMEOUT_S, isolation_level=None)
        try:
            st = os.stat(self.path)
            self.identity = (st.st_dev, st.st_ino)  # the file opened: move_aside never renames another one
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process never corrupts it
            self.db.executescript(SCHEMA)
        except BaseException:  # closed now, not by the garbage collector after open_default moved the file
            self.db.close()
            raise

    @classmethod
    def open_default(cls, notice: Notice | None = None) -> EmbeddingCache | None:
        """The cache in ``cache_dir()``, or None (with a notice) when it cannot be used; a damaged one is moved
        aside (with a notice) and a new one started."""
        from zstag.paths import cache_dir

        path = cache_dir() / CACHE_FILE
        for attempt in range(2):
            try:
                return cls(path, notice)
            except (OSError, sqlite3.Error) as exc:
                cause = " ".join(str(exc).split())
                if attempt == 0 and _damaged(exc) and _move_aside(path):
                    notify(notice, f"embedding cache {path} is damaged ({cause}); moved to "
                                   f"{path.name}{DAMAGED_SUFFIX}, starting a new one")
                    continue
                notify(notice, f"embedding cache {path} unusable ({cause}); continuing without it")
                return None
        return None

    def close(self) -> None:
        self.db.close()

    def move_aside(self) -> Path | None:
        """Close this connection and rename the database (and its WAL files) to *.damaged, once, if the path
        still holds the file opened (another zstag process may have moved it and started a new one). Closed
        first: SQLite finds a WAL file by name, so an open connection to a renamed file could later remove
        the new cache's. The new path, or None if nothing was renamed; later calls fail (sqlite3.Error)."""
        self.set_aside = True
        self.db.close()
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != self.identity or not _move_aside(self.path):
            return None
        return self.path.with_name(self.path.name + DAMAGED_SUFFIX)

    def known_digest(self, path: str, stamp: tuple) -> str | None:
        """The digest remembered for this path and stamp (size, mtime_ns, ctime_ns, inode), or None."""
        row = self.db.execute(
            "SELECT digest FROM digests WHERE path=? AND size=? AND mtime_ns=? AND ctime_ns=? AND inode=?",
            (_path_key(path), *stamp),
        ).fetchone()
        return row[0] if row else None

    def remember_digests(self, rows: list[tuple[str, tuple, str]]) -> None:
        """Store (path, stamp, digest) rows in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)",
                                [(_path_key(path), *stamp, digest) for path, stamp, digest in rows])

    def get(self, model_id: str, digest: str, offset: float, max_seconds: float | None):
        """(embedding, stats) or None."""
        row = self.db.execute(
            f"SELECT dim, vector, stats FROM embeddings WHERE {KEY_MATCH}", _key(model_id, digest, offset, max_seconds)
        ).fetchone()
        if row is None:
            return None
        return _row_vector(*row), (json.loads(row[2]) if row[2] else None)  # DamagedRow: lookup's miss, noticed

    def put(self, model_id, digest, offset, max_seconds, embedding: np.ndarray, stats: dict | None) -> None:
        vector = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
        text = json.dumps(stats) if stats is not None else None
        dim = len(vector) // 4
        self.db.execute(
            "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*_key(model_id, digest, offset, max_seconds), dim, vector + _check(dim, vector, text), text),
        )

    def get_failure(self, model_id: str, digest: str, offset: float, max_seconds: float | None) -> str | None:
        """The cause (error line without the path) stored for content that failed to decode with today's
        decoders, or None."""
        row = self.db.execute(
            f"SELECT cause FROM decode_failures WHERE {KEY_MATCH} AND decoders=?",
            (*_key(model_id, digest, offset, max_seconds), decoder_stamp()),
        ).fetchone()
        return row[0] if row else None

    def put_failure(self, model_id, digest, offset, max_seconds, cause: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO decode_failures VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*_key(model_id, digest, offset, max_seconds), decoder_stamp(), cause))

    def copy_rows(self, digest: str, new_digest: str) -> None:
        """Every embedding row of content digest, also under new_digest: for a file whose tags changed but
        whose audio did not (tagfiles), so that it stays embedded, for every model."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO embeddings SELECT model_id, ?, start_s, max_s, version, dim, "
                            "vector, stats FROM embeddings WHERE digest=?", (new_digest, digest))

    def library(self, model_id: str) -> list[tuple[str, tuple, np.ndarray, dict | None]]:
        """(path, stamp, embedding, stats) of every remembered path whose digest has a whole-track embedding
        by model_id (offset 0, no --max-seconds): the tracks `zstag search` looks through without a PATH.
        The stamp is the file's when hashed: a caller compares it with the file's now."""
        rows = self.db.execute(
            "SELECT d.path, d.size, d.mtime_ns, d.ctime_ns, d.inode, e.dim, e.vector, e.stats FROM digests d "
            "JOIN embeddings e ON e.digest = d.digest WHERE e.model_id=? AND e.start_s=? AND e.max_s=? AND "
            "e.version=? ORDER BY d.path", (model_id, 0.0, _max_key(None), PIPELINE_VERSION)).fetchall()
        tracks = []
        for path, *stamp, dim, blob, stats in rows:
            try:
                vector = _row_vector(dim, blob, stats)
            except DamagedRow:
                _notice_once(self, f"embedding cache {self.path}: {DAMAGED_ROW}; its file is left out (tag it to "
                                   "embed it again)")
                continue
            tracks.append((os.fsdecode(path) if isinstance(path, bytes) else path, tuple(stamp), vector,
                           json.loads(stats) if stats else None))
        return tracks

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM embeddings WHERE model_id=?", (model_id,)).fetchone()[0]


class DamagedRow(ValueError):
    """A row whose checksum does not match its bytes: never scored."""


def _check(dim: int, vector: bytes, stats: str | None) -> bytes:
    """The CRC-32 (4 bytes) that ends a row's vector blob: of its dim, vector bytes and stats text. Not of
    its key: copy_rows copies a row under another digest as it is."""
    crc = zlib.crc32(vector, zlib.crc32(int(dim).to_bytes(4, "little")))
    return zlib.crc32((stats or "").encode("utf-8"), crc).to_bytes(CHECK_BYTES, "little")


def _row_vector(dim: int, blob: bytes, stats: str | None) -> np.ndarray:
    """A row's float32 embedding, its checksum verified; DamagedRow when the checksum does not match. A row
    without one (written by an older zstag) is read as it was then, unchecked: an upgrade must not re-embed a
    whole library; the row gets its checksum when its file is embedded again."""
    size = 4 * dim
    if len(blob) != size and (len(blob) != size + CHECK_BYTES or blob[size:] != _check(dim, blob[:size], stats)):
        raise DamagedRow(DAMAGED_ROW)
    return np.frombuffer(blob, dtype="<f4", count=dim).copy()


def _move_aside(path: Path) -> bool:
    """path → path.damaged (replacing an older one), with its -wal and -shm files; False if it failed."""
    try:
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                os.replace(part, path.with_name(path.name + DAMAGED_SUFFIX + suffix))
    except OSError:
        return False
    return True


def _path_key(path: str) -> str | bytes:
    """The path as SQLite stores it: text, or its bytes (a BLOB) for a name that is not UTF-8, which
    SQLite cannot take as text; a BLOB never equals a text key."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _key(model_id: str, digest: str, offset: float, max_seconds: float | None) -> tuple:
    """A row's key, as KEY_MATCH and the tables' first five columns take it."""
    return model_id, digest, float(offset), _max_key(max_seconds), PIPELINE_VERSION


def _max_key(max_seconds: float | None) -> float:
    return -1.0 if max_seconds is None else float(max_seconds)  # NULLs never match in a key


def cache_id(model_id: str, bf16: bool = False, sample_seconds: float | None = None) -> str:
    """The model id that the cache keys a model's rows by: bfloat16 embeddings (--bf16) and those of sampled
    windows (--sample-seconds N, per N) have their own, so they never mix with whole-track float32 rows."""
    sampled = "" if sample_seconds is None else f"{SAMPLE_CACHE_SUFFIX}{float(sample_seconds)!r}"
    return model_id + (BF16_CACHE_SUFFIX if bf16 else "") + sampled


def file_digests(paths: list[str], *, workers: int | None = None, use_cache: bool = True,
                 notice: Notice | None = None) -> list[str | None]:
    """Each file's content digest, as the cache keys its rows by (None: gone, not a regular file, unreadable
    or changed while hashed); remembered in the cache like embeddings.embed_files' digests, so a later
    embed_files or cached_results of the same files only stats them. notice: the cache's (errors.notify)."""
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else max(1, int(workers))
    cache = EmbeddingCache.open_default(notice) if use_cache else None
    if cache is None:
        def digest(path: str) -> str | None:
            real = os.path.realpath(path)
            stamp = file_stamp(real)
            return _try_digest(real, stamp) if stamp is not None else None

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(digest, paths))
    try:
        digests = content_digests(cache, paths, workers)
    finally:
        cache.close()
    return [digests[i][0] if i in digests else None for i in range(len(paths))]


def file_stamp(path: str) -> tuple | None:
    """What changes whenever a file's content may have: size, mtime, ctime, inode. None if it is gone or
    not a regular file: a FIFO or device is never hashed (reading one may block for ever); the decoder
    reports it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def content_digests(cache: EmbeddingCache, paths: list[str], workers: int) -> dict[int, tuple[str, tuple]]:
    """(content digest, stamp) per input index: remembered when the file is unchanged, else hashed."""
    digests, to_hash = {}, []
    for i, path in enumerate(paths):
        real = os.path.realpath(path)
        stamp = file_stamp(real)
        if stamp is None:
            continue  # gone or not a regular file: the decoder will say why
        known = _lookup_digest(cache, real, stamp)
        if known:
            digests[i] = (known, stamp)
        else:
            to_hash.append((i, real, stamp))
    if to_hash:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL on large buffers
            hashed = list(pool.map(lambda job: _try_digest(job[1], job[2]), to_hash))
        remember = []
        for (i, real, stamp), digest in zip(to_hash, hashed):
            if digest is not None:
                digests[i] = (digest, stamp)
                remember.append((real, stamp, digest))
        try:
            cache.remember_digests(remember)
        except sqlite3.Error as exc:
            _warn_cache(exc, cache)
    return digests


def _try_digest(path: str, stamp: tuple) -> str | None:
    """The digest, or None if the file cannot be read or changed while it was hashed."""
    try:
        digest = content_digest(path)
    except OSError:
        return None
    return digest if file_stamp(path) == stamp else None


def _lookup_digest(cache: EmbeddingCache, path: str, stamp: tuple) -> str | None:
    try:
        return cache.known_digest(path, stamp)
    except sqlite3.Error as exc:
        _warn_cache(exc, cache)
        return None


def lookup(cache: EmbeddingCache, model_id, digest, offset, max_seconds) -> tuple | str | None:
    """A cache hit: (embedding, stats), or the cause stored for content that failed to decode (a str,
    without the file's name); None for a miss. A damaged row or page is a miss (with a notice), not a crash."""
    try:
        hit = cache.get(model_id, digest, offset, max_seconds)
        return hit if hit is not None else cache.get_failure(model_id, digest, offset, max_seconds)
    except DamagedRow:
        _notice_once(cache, f"embedding cache {cache.path}: {DAMAGED_ROW}; embedding its file again")
        return None
    except (sqlite3.Error, ValueError) as exc:
        _warn_cache(exc, cache)
        return None


def _warn_cache(exc: Exception, cache: EmbeddingCache) -> None:
    """One notice to the cache's callback per distinct cause. A damaged database file (SQLite says corrupt or
    not a database) is moved aside, so that the next run starts a new cache instead of failing on every file."""
    cause = " ".join(str(exc).split())
    if cache.set_aside:
        return  # reported when it was moved aside; this run's other lookups fail the same way
    if _damaged(exc):
        aside = cache.move_aside()
        text = f"embedding cache {cache.path} is damaged ({cause}); " + (
            f"moved to {aside.name}: the next run starts a new one" if aside
            else "not moved (another zstag process may have replaced it already; else delete it)")
    else:
        text = f"embedding cache: {cause}"
    _notice_once(cache, text)


def _notice_once(cache: EmbeddingCache, text: str) -> None:
    if text not in cache.noticed:
        cache.noticed.add(text)
        notify(cache.notice, text)


def _damaged(exc: Exception) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file itself is bad (not a lock, a full disk or permissions)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def store(cache, model_id, digest, offset, max_seconds, outcome: np.ndarray | str, stats: dict | None) -> None:
    """outcome: the embedding, or the cause of a content failure (audio.ContentError) without the file's
    name (the same bytes may have another name next time). A cache error is a notice, never raised."""
    try:
        if isinstance(outcome, str):
            cache.put_failure(model_id, digest, offset, max_seconds, outcome)
        else:
            cache.put(model_id, digest, offset, max_seconds, outcome, stats)
    except sqlite3.Error as exc:  # a full disk or a locked cache must not lose the run's results
        _warn_cache(exc, cache)
