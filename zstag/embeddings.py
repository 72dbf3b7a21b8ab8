"""Whole-track embeddings of audio files, with an on-disk cache shared by `zstag tag` and `zstag eval`.

    results = embed_files(model, ["a.mp3", "b.wav"])   # [TrackResult(path, embedding, error, stats, cached)]

Pipeline: worker processes (a forkserver pool: they never inherit torch or its threads) decode each
file, cut it into log-mel segments and compute a few acoustic statistics; the main process embeds each
track while they decode the next files: the mean over *all* its segments (model.embed_track), never a
random crop, each track on its own so that its embedding does not depend on which files share a batch.
A cold `zstag tag` may pass a ModelBuild instead of a model: the workers start decoding while torch
is imported and the model built on a thread (~1 s of a CLI start), and what they decode meanwhile waits.
Each forward pass runs on one torch thread; for the heavy musicnn backbones, several passes at once
(of one track or several) on threads of this process (see _Inference). A worker that dies (decoder
crash, out of memory) costs only its file; workers exit if the main process is killed. The thread count
that a track's numbers depend on is fixed, so results are bit-identical whatever --workers says, in a
worker or in this process.

Cache: one SQLite file, ``cache_dir()/embeddings.sqlite`` in WAL mode. A row is keyed by
(model id, content digest, offset, max_seconds, pipeline version) and holds the float32 joint-space
embedding and the statistics as JSON. Each file's row is committed on its own, so a killed run loses
at most the files in flight and leaves the cache readable. A file whose bytes cannot give audio
(audio.ContentError: empty, corrupt, not audio, no samples, silent, too short) gets a row of the same key in a second
table, its error line without the path and keyed by the decoders too (decoder_stamp), so a warm re-tag
reports it without torch or decoding. Failures that may not happen again (unreadable or changed file,
decoder crash, no ffmpeg, "cannot embed") are never stored.

The content digest is SHA-256 over the whole file (and its size). Hashing costs ~1 ms per MB, far less
than decoding it (~100 ms per MB of mp3); hashing only the first/last MiB would miss edits in the
middle (re-encoded audio of equal size). A second table remembers (path, size, mtime_ns, ctime_ns,
inode) → digest, so a warm run only stats its files; any write to a file changes its ctime and forces
a rehash. Because rows are keyed by content, a copied, renamed or touched file still hits the cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable

import numpy as np

from zstag import audio
from zstag.acoustics import analyse_file, error_cause, error_line, failure_line

CACHE_FILE = "embeddings.sqlite"
DAMAGED_SUFFIX = ".damaged"  # a database SQLite calls corrupt is renamed to this, and a new one started
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # primary result codes (sqlite3.h)
PIPELINE_VERSION = 5  # bump when decoding, features or inference change, so that old rows stop matching
# 3: blocked STFT with a banded filterbank, GEMM musicnn front end, one torch thread per track (rounding-level)
# 4: a WAV/AIFF cut short on disk is a truncation error (it was embedded from what was left)
# 5: silent or too short audio is a content failure (audio.SILENT_PEAK, MIN_AUDIO_SECONDS; it was embedded)
HASH_CHUNK = 1 << 20
IN_FLIGHT_PER_WORKER = 2  # decoded tracks waiting per worker: keeps workers busy, bounds memory
QUEUED_PER_THREAD = 1  # decoded tracks per inference thread (heavy models) waiting, besides those being embedded
SQLITE_TIMEOUT_S = 30.0  # wait this long for another zstag process holding the write lock
PARENT_POLL_S = 0.5  # how often a worker checks that the main process still runs
CRASH_MESSAGE = "the decoder process died (crash or out of memory)"
# The fork server starts with these, so every worker has them from the start (see _start_fork_server).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MALLOC_HEAP_MAX = 32 << 20  # workers: allocations up to this come from the heap, not mmap (glibc) ...
MALLOC_KEEP = 64 << 20  # ... and up to this much freed heap is kept for the next file
RESULT_PIPE_BYTES = 1 << 20  # the pipe results come back through (Linux; see _widen_result_pipe)
WAITING_BYTES = 256 << 20  # decoded segments held while the model builds (~3 hours of audio)
BF16_CACHE_SUFFIX = "+bf16"  # appended to a model id in the cache: bfloat16 rows are other numbers (--bf16)

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


class ContentFailure(str):
    """decode_file's error line for an audio.ContentError: the one kind of failure the cache keeps. A str,
    so it passes wherever an error line does; .cause is the line without the file's name, as stored."""

    def __new__(cls, path: str, cause: str):
        line = super().__new__(cls, failure_line(path, cause))
        line.path, line.cause = path, cause
        return line

    def __reduce__(self):  # it comes back from the workers pickled: rebuilt from its two parts
        return ContentFailure, (self.path, self.cause)


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
        parts += [_file_stamp(str(f)) for f in files]
    ffmpeg = shutil.which("ffmpeg")
    parts.append(_file_stamp(os.path.realpath(ffmpeg)) if ffmpeg else "no ffmpeg")
    return "; ".join(parts)


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:?"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class TrackResult:
    path: str
    embedding: np.ndarray | None  # float32 [D] in the joint space; None when the file failed
    error: str | None = None  # one line naming the file and the cause
    stats: dict | None = None  # acoustics.file_stats of the file
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.embedding is not None


class ModelBuild:
    """A model being built on a thread of its own, for embed_files: a cold `zstag tag` starts decoding
    at once instead of after torch's import and the model's construction (~1 s of a CLI start, while the
    decoders' cores would idle). What decoding and the cache need is known without torch: the model id
    and its front end (audio.FrontEnd). The caller should not touch torch until result(): an import
    of it would wait for the building thread's."""

    def __init__(self, build: Callable, model_id: str, front_end: audio.FrontEnd):
        self.model_id, self.front_end = model_id, front_end
        self._future: Future = Future()
        # Not a daemon: an early exit waits for the import rather than tearing it down half-way.
        threading.Thread(target=self._run, args=(build,), name="zstag-model-build").start()

    def _run(self, build: Callable) -> None:
        try:
            self._future.set_result(build())
        except BaseException as exc:  # re-raised by result(), in the caller's thread
            self._future.set_exception(exc)

    def done(self) -> bool:
        return self._future.done()

    def result(self):
        """The model (waits for it), or the exception its build raised."""
        return self._future.result()


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file's size and bytes, in hex (first 32 digits)."""
    digest = hashlib.sha256()  # twice as fast as BLAKE2b where the CPU has SHA instructions
    with open(path, "rb") as handle:
        digest.update(os.fstat(handle.fileno()).st_size.to_bytes(8, "little"))
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


class EmbeddingCache:
    """The SQLite store of track embeddings and file digests (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.set_aside = False  # move_aside has run
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
    def open_default(cls) -> EmbeddingCache | None:
        """The cache in ``cache_dir()``, or None (with a warning) when it cannot be used."""
        from zstag.paths import cache_dir

        path = cache_dir() / CACHE_FILE
        for attempt in range(2):
            try:
                return cls(path)
            except (OSError, sqlite3.Error) as exc:
                cause = " ".join(str(exc).split())
                if attempt == 0 and _damaged(exc) and _move_aside(path):
                    print(f"zstag: warning: embedding cache {path} is damaged ({cause}); moved to "
                          f"{path.name}{DAMAGED_SUFFIX}, starting a new one", file=sys.stderr)
                    continue
                print(f"zstag: warning: embedding cache {path} unusable ({cause}); continuing without it",
                      file=sys.stderr)
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
        if row is None or len(row[1]) != 4 * row[0]:
            return None
        return np.frombuffer(row[1], dtype="<f4").copy(), (json.loads(row[2]) if row[2] else None)

    def put(self, model_id, digest, offset, max_seconds, embedding: np.ndarray, stats: dict | None) -> None:
        vector = np.ascontiguousarray(embedding, dtype="<f4")
        self.db.execute(
            "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*_key(model_id, digest, offset, max_seconds), vector.size, vector.tobytes(),
             json.dumps(stats) if stats is not None else None),
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
        return [(os.fsdecode(path) if isinstance(path, bytes) else path, tuple(stamp),
                 np.frombuffer(vector, dtype="<f4").copy(), json.loads(stats) if stats else None)
                for path, *stamp, dim, vector, stats in rows if len(vector) == 4 * dim]

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return self.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM embeddings WHERE model_id=?", (model_id,)).fetchone()[0]


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


def embed_files(
    model,
    paths: list[str | os.PathLike],
    *,
    workers: int | None = None,
    use_cache: bool = True,
    offset: float = 0.0,
    max_seconds: float | None = None,
    progress: bool = True,
    cache: EmbeddingCache | None = None,
    device: str = "cpu",
    bf16: bool = False,
) -> list[TrackResult]:
    """Embed each file as a whole track; results in input order. Never raises for a bad file.

    model: a model, or a ModelBuild (its build's exception is raised once the model is needed, after
    the first files have decoded; no embedding or failure is stored before). workers: decode processes
    (None: all cores; 0: decode in this process). progress: a progress bar on stderr when it is a
    terminal. cache: an open EmbeddingCache (default: the one in cache_dir()). device: where the model
    runs (devices.DEVICE_HELP; DeviceError before any decoding if unusable, unless model is a
    ModelBuild, whose build should check it); the model is back where it was when this returns. Cache
    rows do not depend on it (see devices.py). bf16: run the model's float32 products in bfloat16 on a
    CPU that has it natively (devices.cpu_bfloat16; DeviceError otherwise, when checked as device is);
    such rows are cached apart (cache_id).
    """
    from zstag.devices import check_bf16, check_device, pick_device

    building = isinstance(model, ModelBuild)
    device = check_device(device) if building else pick_device(device)  # a ModelBuild's thread imports torch
    if bf16 and not building:
        check_bf16(device)
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else max(0, int(workers))
    if not building:
        model.eval()
    results: list[TrackResult | None] = [None] * len(paths)
    model_id = getattr(model, "model_id", "untrained")
    own_cache = use_cache and model_id != "untrained" and cache is None  # an unsaved model has no stable id
    if own_cache:
        cache = EmbeddingCache.open_default()
    if not use_cache or model_id == "untrained":
        cache = None
    try:
        with _Progress(len(paths), progress) as bar:
            _embed(model, cache_id(model_id, bf16), paths, results, cache, workers, offset, max_seconds, bar, device,
                   bf16)
    finally:
        if own_cache and cache is not None:
            cache.close()
    return results


def cache_id(model_id: str, bf16: bool = False) -> str:
    """The model id that the cache keys a model's rows by: bfloat16 embeddings (--bf16) have their own."""
    return model_id + BF16_CACHE_SUFFIX if bf16 else model_id


def cached_results(
    model_id: str,
    paths: list[str | os.PathLike],
    *,
    offset: float = 0.0,
    max_seconds: float | None = None,
    workers: int | None = None,
    cache: EmbeddingCache | None = None,
) -> list[TrackResult | None]:
    """Each file's cached outcome, without the model or any decoding: a TrackResult (cached=True) per
    hit, with its embedding or, for content that failed to decode before, its error line; None per miss
    (not cached, unreadable, gone, or changed while hashed). A miss is never dropped: the caller embeds
    it (embed_files). Digests of newly hashed files are remembered, so embed_files
    does not hash them again. workers: hashing threads (None: all cores). cache: default cache_dir()'s.
    """
    paths = [str(p) for p in paths]
    results: list[TrackResult | None] = [None] * len(paths)
    own_cache = cache is None
    if own_cache:
        cache = EmbeddingCache.open_default()
        if cache is None:
            return results
    try:
        workers = default_workers() if workers is None else max(0, int(workers))
        _fill_hits(cache, model_id, paths, _digests(cache, paths, workers), offset, max_seconds, results)
    finally:
        if own_cache:
            cache.close()
    return results


def file_digests(paths: list[str], *, workers: int | None = None, use_cache: bool = True) -> list[str | None]:
    """Each file's content digest, as the cache keys its rows by (None: gone, not a regular file, unreadable
    or changed while hashed); remembered in the cache like embed_files' digests, so a later embed_files or
    cached_results of the same files only stats them."""
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else max(1, int(workers))
    cache = EmbeddingCache.open_default() if use_cache else None
    if cache is None:
        def digest(path: str) -> str | None:
            real = os.path.realpath(path)
            stamp = _stamp(real)
            return _try_digest(real, stamp) if stamp is not None else None

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(digest, paths))
    try:
        digests = _digests(cache, paths, workers)
    finally:
        cache.close()
    return [digests[i][0] if i in digests else None for i in range(len(paths))]


def _fill_hits(cache, model_id, paths, digests, offset, max_seconds, results) -> None:
    """results[i] = the cached TrackResult of each digested path that the cache holds."""
    for i, (digest, _) in digests.items():
        results[i] = _lookup(cache, paths[i], model_id, digest, offset, max_seconds)


def _embed(model, model_id, paths, results, cache, workers, offset, max_seconds, bar, device, bf16) -> None:
    digests: dict[int, tuple[str, tuple]] = {}  # index → (content digest, stat stamp when hashed)
    if cache is not None:
        digests = _digests(cache, paths, workers)
        _fill_hits(cache, model_id, paths, digests, offset, max_seconds, results)
        bar.advance(sum(r is not None for r in results))

    def finish(i: int, outcome, stats: dict | None) -> None:
        failed = isinstance(outcome, str)
        results[i] = TrackResult(paths[i], None, outcome) if failed else TrackResult(paths[i], outcome, None, stats)
        # Stored only if the file did not change between hashing and decoding, and a failure only if its
        # bytes caused it (a crash, a missing ffmpeg, "cannot embed" may not happen next time).
        keep = not failed or isinstance(outcome, ContentFailure)
        if keep and cache is not None and i in digests and _stamp(paths[i]) == digests[i][1]:
            _store(cache, model_id, digests[i][0], offset, max_seconds, outcome, stats)
        bar.advance(1)

    todo = [(i, paths[i]) for i, r in enumerate(results) if r is None]
    building = isinstance(model, ModelBuild)
    if building and (workers == 0 or not todo):
        model, building = model.result().eval(), False  # decoding here would wait for the import anyway
    with contextlib.closing(decode_files(todo, model.front_end.to_dict(), offset, max_seconds, workers)) as decoded:
        early: deque = deque()
        if building:
            early = _decoded_while_building(model, decoded)
            model = model.result().eval()
        if not isinstance(device, str):
            target = device  # resolved by embed_files
        else:  # a ModelBuild's name, now that torch is loaded
            from zstag.devices import check_bf16, pick_device

            target = pick_device(device)
            if bf16:
                check_bf16(target)
        with _Inference(model, target, workers, bf16) as inference:
            for i, outcome in chain(_popping(early), decoded):
                if isinstance(outcome, str):
                    finish(i, outcome, None)
                else:
                    for done in inference.submit(i, paths[i], *outcome):
                        finish(*done)
            for done in inference.drain():
                finish(*done)


def _decoded_while_building(build: ModelBuild, decoded) -> deque:
    """The (index, outcome) pairs that decoded tracks yield until the model is built, all of them
    decoded, or WAITING_BYTES of segments held: taking them lets the workers go on (decode_files keeps
    only a few in flight). Checked between tracks, so the model may wait for one decode."""
    early, held = deque(), 0
    while not build.done() and held < WAITING_BYTES:
        item = next(decoded, None)
        if item is None:
            break
        early.append(item)
        held += 0 if isinstance(item[1], str) else item[1][0].nbytes
    return early


def _popping(items: deque):
    """Yield and forget each item: a track's segments are freed once it is embedded."""
    while items:
        yield items.popleft()


def _stamp(path: str) -> tuple | None:
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


def _digests(cache: EmbeddingCache, paths: list[str], workers: int) -> dict[int, tuple[str, tuple]]:
    """(content digest, stamp) per input index: remembered when the file is unchanged, else hashed."""
    digests, to_hash = {}, []
    for i, path in enumerate(paths):
        real = os.path.realpath(path)
        stamp = _stamp(real)
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
    return digest if _stamp(path) == stamp else None


def _lookup_digest(cache: EmbeddingCache, path: str, stamp: tuple) -> str | None:
    try:
        return cache.known_digest(path, stamp)
    except sqlite3.Error as exc:
        _warn_cache(exc, cache)
        return None


def _lookup(cache: EmbeddingCache, path, model_id, digest, offset, max_seconds) -> TrackResult | None:
    try:
        hit = cache.get(model_id, digest, offset, max_seconds)
        cause = None if hit is not None else cache.get_failure(model_id, digest, offset, max_seconds)
    except (sqlite3.Error, ValueError) as exc:  # a damaged row or page is a miss, not a crash
        _warn_cache(exc, cache)
        return None
    if hit is not None:
        return TrackResult(path, hit[0], None, hit[1], cached=True)
    return None if cause is None else TrackResult(path, None, failure_line(path, cause), cached=True)


_warned: set[str] = set()  # each cache warning is printed once per run


def _warn_cache(exc: Exception, cache: EmbeddingCache | None = None) -> None:
    """One line on stderr, once per distinct cause. A damaged database file (SQLite says corrupt or not a
    database) is moved aside, so that the next run starts a new cache instead of failing on every file."""
    cause = " ".join(str(exc).split())
    if cache is not None and cache.set_aside:
        return  # reported when it was moved aside; this run's other lookups fail the same way
    if cache is not None and _damaged(exc):
        aside = cache.move_aside()
        text = f"embedding cache {cache.path} is damaged ({cause}); " + (
            f"moved to {aside.name}: the next run starts a new one" if aside
            else "not moved (another zstag process may have replaced it already; else delete it)")
    else:
        text = f"embedding cache: {cause}"
    if text not in _warned:
        _warned.add(text)
        print(f"zstag: warning: {text}", file=sys.stderr)


def _damaged(exc: Exception) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file itself is bad (not a lock, a full disk or permissions)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _store(cache, model_id, digest, offset, max_seconds, outcome, stats) -> None:
    """outcome: the embedding, or a ContentFailure, kept as its cause without the file's name (the same
    bytes may have another name next time)."""
    try:
        if isinstance(outcome, ContentFailure):
            cache.put_failure(model_id, digest, offset, max_seconds, outcome.cause)
        else:
            cache.put(model_id, digest, offset, max_seconds, outcome, stats)
    except sqlite3.Error as exc:  # a full disk or a locked cache must not lose the run's results
        _warn_cache(exc, cache)


# --- decoding (runs in the worker processes) ----------------------------------------------------


def decode_file(path: str, fe_dict: dict, offset: float = 0.0, max_seconds: float | None = None):
    """(segments [n_seg, n_mels, T] float32, stats dict), or a one-line error string naming the file: a
    ContentFailure when the file's bytes are to blame (audio.ContentError)."""
    try:
        fe = audio.FrontEnd.from_dict(fe_dict)
        mel, stats = analyse_file(path, fe, offset=offset, duration=max_seconds)
        return np.ascontiguousarray(audio.segment(mel, fe), dtype=np.float32), stats
    except audio.ContentError as exc:
        return ContentFailure(path, error_cause(path, exc))
    except Exception as exc:  # a worker must answer for every file, whatever the decoder throws
        return error_line(path, exc)


def _init_worker(main_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    watch_main(main_pid)
    # Decoders print notes straight to fd 2 (libmpg123: "Note: Illegal Audio-MPEG-Header ..."); the
    # worker reports each failure as one line through its result instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _blas_limit()  # one BLAS thread per worker: the workers already fill the cores, and results stay put
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc only (elsewhere nothing happens): decoding a file allocates and frees buffers of a few MB
    (decoded blocks, the resampled track, STFT blocks, segments). By default each is mmapped and
    unmapped again, so every file faults in ~8-13 MB of fresh zeroed pages: ~3 ms of the ~30 ms a
    30 s mp3 costs. Served from a heap that keeps MALLOC_KEEP bytes, they are reused instead."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, MALLOC_KEEP)  # M_TRIM_THRESHOLD
    mallopt(-3, MALLOC_HEAP_MAX)  # M_MMAP_THRESHOLD


def _exit_with(main_pid: int) -> None:
    """Exit when the main process is gone, however it ended (kill -9 too): a worker of a killed run would
    otherwise wait for ever on its task queue, whose write end it holds itself, and keep the fork server
    and resource tracker alive with it (they exit once no worker holds their pipes). Waits on a pidfd
    (Linux ≥ 5.3), which also wakes while the dead main process is an unreaped zombie; elsewhere polls.
    Run on a daemon thread by each worker, tag's and preprocess's alike."""
    try:
        fd = os.pidfd_open(main_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # not Linux, an old kernel, or a sandbox that forbids it
        fd = None
    if fd is not None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()  # readable once the process has ended
        os._exit(1)
    while True:
        time.sleep(PARENT_POLL_S)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # the pid exists (owned by another user): not proof of death


def watch_main(main_pid: int) -> None:
    """In a worker process: exit as soon as the process ``main_pid`` (the one that made the pool) ends."""
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True, name="zstag-watch-main").start()


def _context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Imported once in the fork server and inherited by every worker.
    context.set_forkserver_preload(["zstag.embeddings", "soundfile", "soxr", "scipy.fft"])  # scipy.fft: ~0.15 s
    _start_fork_server()
    return context


def _start_fork_server() -> None:
    """Start the fork server (if it is not running yet) with WORKER_ENV in its environment, leaving
    this process's environment as it was. OpenBLAS reads its thread count once, when numpy loads it:
    started with the default (all cores), each forked worker re-creates helper threads that spin for
    ~0.1 s of CPU over its first files although threadpoolctl has set one thread (~10% of a 60-file run
    on 2 cores)."""
    from multiprocessing import forkserver

    saved = {name: os.environ.get(name) for name in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _pool(n: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(n, mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),))
    _widen_result_pipe(pool)
    return pool


def _widen_result_pipe(pool: ProcessPoolExecutor) -> None:
    """A 30 s track's segments (~0.7 MB) through the default 64 KB pipe take ~11 turns of worker
    writing and this process reading; through a 1 MB pipe, one (~4% off tagging time on 2 cores).
    Best effort: Linux only, a CPython detail, and the kernel may refuse the size."""
    try:
        import fcntl

        fcntl.fcntl(pool._result_queue._writer.fileno(), fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


def decode_files(
    jobs: list[tuple[int, str]], fe_dict: dict, offset: float, max_seconds: float | None, workers: int,
    decode=decode_file,
):
    """Yield (index, decode(path, fe_dict, offset, max_seconds)) for each (index, path) job, in completion order.

    At most IN_FLIGHT_PER_WORKER decoded tracks per worker wait for the consumer. If a worker dies
    (a decoder crash, the OOM killer), the files it may have held are retried one at a time in a
    fresh pool; the one that kills its worker again is reported as failed, and the rest go on.
    """
    if workers == 0 or not jobs:
        yield from _decode_here(jobs, decode, fe_dict, offset, max_seconds)
        return
    queue = deque(jobs)
    suspects: deque = deque()
    while queue or suspects:
        n = max(1, min(workers, len(queue) + len(suspects)))
        pool = _pool(n)
        in_flight: dict = {}
        isolating = False
        try:
            while queue or suspects or in_flight:
                if suspects:
                    if not in_flight:
                        job = suspects[0]
                        in_flight[pool.submit(decode, job[1], fe_dict, offset, max_seconds)] = job
                        suspects.popleft()  # only once submitted: a broken pool must not lose it
                        isolating = True
                else:
                    isolating = False
                    while queue and len(in_flight) < n * IN_FLIGHT_PER_WORKER:
                        job = queue[0]
                        in_flight[pool.submit(decode, job[1], fe_dict, offset, max_seconds)] = job
                        queue.popleft()
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: in_flight[f][0]):
                    outcome = future.result()  # raises BrokenProcessPool if its worker died
                    index = in_flight.pop(future)[0]
                    yield index, outcome
        except BrokenProcessPool:
            lost = list(in_flight.values())
            pool.shutdown(wait=True, cancel_futures=True)
            if not _pool_starts():
                # Workers cannot even start (e.g. the parent's __main__ cannot be re-imported, as
                # for `python - < script`): decode the rest here rather than fail every file.
                print("zstag: warning: decoder processes cannot start; decoding in this process", file=sys.stderr)
                yield from _decode_here(sorted(lost) + list(suspects) + list(queue), decode, fe_dict, offset, max_seconds)
                return
            if isolating and len(lost) == 1:
                yield lost[0][0], failure_line(lost[0][1], CRASH_MESSAGE)
            else:
                suspects.extend(sorted(lost))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _decode_here(jobs, decode, fe_dict, offset, max_seconds):
    """decode_files in this process: (index, outcome) per job, decoder notes kept off stderr, and one
    BLAS thread as in the workers (bit-identical features), also before _Inference has set it."""
    blas = _blas_controller()
    for index, path in jobs:
        # Neither held across the yield: the consumer prints, and may change thread settings itself.
        with _native_stderr_silenced(), (blas.limit(limits=1, user_api="blas") if blas else contextlib.nullcontext()):
            outcome = decode(path, fe_dict, offset, max_seconds)
        yield index, outcome


def _blas_controller():
    """threadpoolctl's view of this process's thread pools (scanned once per call), or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _native_stderr_silenced():
    """fd 2 → /dev/null while a file decodes in this process, as in the workers (_init_worker): libmpg123
    prints resync notes straight to fd 2, and the file's failure, if any, comes back as its one line. A
    progress-bar refresh that falls in this window is skipped, nothing else is lost: nothing else prints."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 at all: nothing to silence
        saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_decoders() -> None:
    """Start the decoders' fork server now; it loads numpy, soundfile, soxr and scipy (~0.25 s) in its
    own process while this one goes on. Call it before other slow start-up work (importing torch,
    building the model) when files will be decoded: embed_files then finds it ready. Harmless to call
    more than once, or when nothing gets decoded after all (the server just exits with this process)."""
    _context()


def _pool_starts() -> bool:
    """Whether a fresh worker process can start and answer at all."""
    pool = _pool(1)
    try:
        pool.submit(os.getpid).result()
        return True
    except BrokenProcessPool:
        return False
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _inference_threads:
    """Thread settings while embedding: one torch thread, one BLAS thread, whatever the model.

    One torch thread per forward pass, because float sums split differently across thread counts: a
    fixed count keeps a track's embedding, and its cache entry, the same whatever --workers says. Heavy
    models get their parallelism from running several passes at once instead (_Inference): as fast
    as torch's own threads on an idle machine (~3% faster for musicnn beside two decode workers), and
    far less fragile on a busy one, where OpenMP threads that wait for each other at every op stall
    whenever one is preempted (2-3x slower when other work shared the 2 cores). BLAS: one thread, as
    in the workers, so that decoding in this process (workers=0) gives bit-identical features.
    """

    def __enter__(self):
        import torch

        # BLAS first: threadpoolctl restores every pool it saw, OpenMP (torch's) included, so it must
        # save torch's count before it changes and restore before torch's own restore.
        self.blas = _blas_limit(user_api="blas")
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        if self.blas is not None:
            self.blas.restore_original_limits()
        torch.set_num_threads(self.saved)


class _Inference:
    """Embeds decoded tracks, each forward pass on one torch thread (see _inference_threads).

    The paper's CNN1D (~2 ms per 30 s of audio, less than decoding it) runs inline. The musicnn
    backbones (~0.25 s per 30 s on a CPU core) run on a thread pool, one thread per decode worker
    (--workers; at least one, at most one per core; torch releases the GIL), while the workers decode the
    next files. The pool takes a track in its forward passes of TRACK_BATCH segments (~48 s of audio), so
    a long track, or the last tracks of a run, use every thread; a track's passes are added in order
    (ZeroShotModel.mean_of_sums), so its embedding is the same whichever threads ran them. At most
    QUEUED_PER_THREAD decoded tracks per thread wait, so decoding never runs far ahead of inference and
    memory stays bounded. On a GPU every model runs inline, a track per call, with deterministic kernels
    (devices.deterministic_cuda), while the workers decode the next files.
    """

    def __init__(self, model, device, workers: int, bf16: bool = False):
        self.model = model
        self.device = device
        self.home = model.device  # where the caller's model goes back to
        cpu_light = model.config.get("audio_encoder", {}).get("type") == "cnn1d"
        self.threads = 1 if device.type != "cpu" or cpu_light else max(1, min(workers, default_workers()))
        self.settings = _inference_threads()
        self.pool: ThreadPoolExecutor | None = None
        self.pending: dict = {}  # a forward pass's future → (its _Track, the pass's number)
        self.tracks: list[_Track] = []  # in submission order
        self.cuda = None
        self.bf16, self.bfloat16 = bf16, None  # the latter: the active devices.cpu_bfloat16

    def __enter__(self):
        self.settings.__enter__()  # before the pool starts: its threads take torch's count when they start
        try:
            if self.device.type == "cuda":
                from zstag.devices import deterministic_cuda

                self.cuda = deterministic_cuda().__enter__()
            if self.bf16:
                from zstag.devices import cpu_bfloat16

                self.bfloat16 = cpu_bfloat16().__enter__()
            self.model.to(self.device)
            if self.threads > 1:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="zstag-embed")
        except BaseException:  # e.g. the GPU is out of memory: leave threads, flags and the model as they were
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            try:
                if self.cuda is not None:
                    self.cuda.__exit__(*exc)
                if self.bfloat16 is not None:
                    self.bfloat16.__exit__(*exc)
                self.model.to(self.home)
            finally:
                self.settings.__exit__(*exc)

    def submit(self, index: int, path: str, segments: np.ndarray, stats: dict) -> list[tuple]:
        """Embed a track; returns the tracks finished by now as (index, embedding or error line, stats)."""
        from zstag.model import track_chunks

        chunks = track_chunks(segments)
        if self.pool is None or not chunks:
            return [(index, self._embed(path, segments), stats)]
        track = _Track(index, path, stats, len(segments), [None] * len(chunks), len(chunks))
        self.tracks.append(track)
        for k, chunk in enumerate(chunks):
            self.pending[self.pool.submit(self._forward, chunk)] = (track, k)
        finished = self._collect(block=False)
        while len(self.tracks) > self.threads * (1 + QUEUED_PER_THREAD):  # a pass done is not a track done
            finished += self._collect(block=True)
        return finished

    def drain(self):
        """Yield the remaining tracks as they finish."""
        while self.tracks:
            yield from self._collect(block=True)

    def _collect(self, block: bool) -> list[tuple]:
        """The tracks whose every forward pass is done (waiting for at least one pass if block)."""
        if block:
            wait(self.pending, return_when=FIRST_COMPLETED)
        for future in [f for f in self.pending if f.done()]:
            track, k = self.pending.pop(future)
            track.sums[k] = future.result()
            track.running -= 1
        finished = []
        for track in [t for t in self.tracks if t.running == 0]:
            self.tracks.remove(track)
            finished.append((track.index, self._project(track), track.stats))
        return finished

    def _forward(self, chunk: np.ndarray):
        """One forward pass of a track (on a pool thread): its segment_sum, or the exception it raised."""
        try:
            return self.model.segment_sum(chunk)
        except Exception as exc:  # never lose the run to one file
            return exc

    def _project(self, track: "_Track") -> np.ndarray | str:
        """The track's embedding from its passes, or its error line if one of them failed."""
        failed = next((part for part in track.sums if isinstance(part, Exception)), None)
        if failed is not None:
            return _cannot_embed(track.path, failed)
        try:
            return np.asarray(self.model.embed_sums(track.sums, track.n_segments), dtype=np.float32)
        except Exception as exc:  # never lose the run to one file
            return _cannot_embed(track.path, exc)

    def _embed(self, path: str, segments: np.ndarray) -> np.ndarray | str:
        try:
            return np.asarray(self.model.embed_track(segments), dtype=np.float32)
        except Exception as exc:  # never lose the run to one file
            return _cannot_embed(path, exc)


@dataclass
class _Track:
    """A track whose forward passes run on _Inference's pool."""

    index: int
    path: str
    stats: dict
    n_segments: int
    sums: list  # per forward pass: its segment_sum, or the exception it raised
    running: int  # passes not done yet


def _cannot_embed(path: str, exc: Exception) -> str:
    return failure_line(path, " ".join(f"cannot embed: {type(exc).__name__}: {exc}".split()))


def _blas_limit(user_api: str | None = None):
    """One thread for the native thread pools (BLAS, and OpenMP unless user_api says only "blas")."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1, user_api=user_api)


class _Progress:
    """A rich progress bar (files, files/s, ETA) on stderr; silent when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled and sys.stderr.isatty() and total > 0
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("embedding"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("embedding", total=self.total, rate="")
        return self

    def advance(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, rate=f"{speed:.1f} files/s" if speed else "")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
