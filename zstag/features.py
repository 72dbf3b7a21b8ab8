"""On-disk feature cache for training (`zstag preprocess`): the log-mel frames of every track, in shards.

A cache folder holds:

- ``cache.json``: what was computed (front end incl. normalisation, shard size, the track plan's sha256);
- ``shard-00000.npy``: float16 [total_frames, n_mels], the frames of up to ``shard_size`` tracks
  concatenated in time (time-major, so a training crop is one contiguous read from a memory map);
- ``shard-00000.json``: that shard's table (id, labels, artist, offset, n_frames per track) and the files
  that failed. It is written last and marks the shard complete;
- ``shard-00000.part-00000.npy`` / ``.json``: while a shard is computed, the tracks done so far, written
  once it has been open SHARD_SECONDS or holds SHARD_BYTES (zstag.shards), so that a killed run loses at
  most about that much; they become the shard when its last track is done;
- ``index.parquet``: every shard table in one, written once all shards are complete;
- ``failures.csv``: the files that could not be decoded, with the reason.

Every file is valid UTF-8 whatever the file names: a track id or path that is not UTF-8 (os.fsdecode's
lone surrogates) is written with U+FFFD in "id" / "path" and its bytes percent-encoded in "id_bytes" /
"path_bytes" (zstag.paths.put_name; the index's nullable ``id_bytes`` column), and read back exactly.

The plan is fixed by the corpus order: shard k holds tracks [k·S, (k+1)·S). A run skips complete shards
and the parts of the others, and computes the rest, so it resumes after ``kill -9`` (Ctrl-C first writes
what it holds as a part); every file is written to a temporary name and renamed, so a killed run never
leaves a half shard or part. ``--shard K/N`` does shards k with k % N == K − 1, so N machines can share
one corpus and their shard files be copied into one folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from zstag.audio import FrontEnd
from zstag.paths import atomic_write, get_name, name_bytes, name_from_bytes, put_name, valid_text
from zstag.shards import DTYPE, SHARD_PATTERN, ShardWriter, npy_problem, remove_leftovers, shard_complete, write_json
from zstag.errors import ZstagError

SHARD_TRACKS = 256  # tracks per shard: ~80 MB of float16 frames for 256 × 30 s clips at 128 mels
SHARD_SECONDS = 60.0  # a shard open this long is written out as a part: what a kill can lose ...
SHARD_BYTES = 256 << 20  # ... or once its frames in memory reach this (~6.5 h of audio): bounds memory too
CACHE_FILE = "cache.json"
INDEX_FILE = "index.parquet"
FAILURES_FILE = "failures.csv"
FORMAT_VERSION = 1
MAX_OPEN_SHARDS = 256  # memory maps kept open by a reader: MSD has ~1,600 shards, ulimit -n is often 1,024
IN_FLIGHT_PER_WORKER = 4  # decoded tracks waiting per worker: bounds memory when the writer lags


class FeatureCacheError(ZstagError):
    """A cache folder that is missing, incomplete, or made for something else (one-line message)."""


@dataclass(frozen=True)
class CachedTrack:
    id: str
    labels: tuple[str, ...]
    artist: str | None
    shard: int
    offset: int  # first frame of the track in its shard
    n_frames: int
    stats: dict | None = field(default=None, compare=False, hash=False)  # zstag.acoustics.file_stats


@dataclass
class PreprocessReport:
    n_tracks: int  # tracks in the whole plan
    n_shards: int  # shards in the whole plan
    shards_done: int = 0  # shards computed by this run
    shards_skipped: int = 0  # shards of this run's part found complete
    tracks_done: int = 0  # tracks computed by this run
    tracks_resumed: int = 0  # tracks of unfinished shards found in their parts (computed by a killed run)
    failures: list[dict] = field(default_factory=list)  # {id, path, error} of this run's part
    complete: bool = False  # every shard of the plan is complete (and the index written)
    seconds: float = 0.0


# --- writing -------------------------------------------------------------------------------------------


def plan_sha256(track_ids: Sequence[str]) -> str:
    """The identity of a plan: the ordered track ids (paths may differ from machine to machine)."""
    return hashlib.sha256(json.dumps(list(track_ids)).encode()).hexdigest()


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 ≤ K ≤ N) → (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: need 1 ≤ K ≤ N")
    return k, n


def compute_frames(path: str, front_end: dict, offset: float = 0.0, duration: float | None = None):
    """One file → (float16 [n_frames, n_mels], acoustic stats, None) or (None, None, one-line error).

    Runs in the worker processes; never raises for a bad file.
    """
    from zstag.acoustics import analyse_file, error_line

    try:
        mel, stats = analyse_file(path, FrontEnd.from_dict(front_end), offset=offset, duration=duration)
    except Exception as exc:  # a run over many files never dies on one bad file
        return None, None, error_line(path, exc)
    return np.ascontiguousarray(mel.T, dtype=DTYPE), stats, None


def _compute_task(task: tuple) -> tuple:
    return compute_frames(*task)


def _check_or_write_manifest(folder: Path, manifest: dict) -> None:
    path = folder / CACHE_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except ValueError as exc:
            raise FeatureCacheError(f"{path}: unreadable: {exc}") from None
        for key in ("format", "front_end", "shard_size", "plan_sha256"):
            if existing.get(key) != manifest.get(key):
                raise FeatureCacheError(
                    f"{folder}: holds a cache made with a different {key.replace('_', ' ')}; use another --out"
                )
        return
    write_json(path, manifest)


def preprocess(
    tracks: Sequence,
    out: str | Path,
    front_end: FrontEnd,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (1, 1),
    shard_size: int = SHARD_TRACKS,
    source: dict | None = None,
    progress=None,
    part_seconds: float = SHARD_SECONDS,
    part_bytes: int = SHARD_BYTES,
) -> PreprocessReport:
    """Compute the log-mel frames of ``tracks`` (objects with id, path, labels, artist) into ``out``.

    Resumable: complete shards are kept and skipped, the parts of unfinished ones kept and the rest of
    them computed. ``shard=(K, N)`` does only the shards k with k % N == K − 1. ``source`` (e.g. corpus
    kind and root) is recorded in cache.json. progress: a callback, progress("preprocess", done, total,
    failed=n) as tracks finish (progress.Bar draws it). part_seconds, part_bytes: when an open shard is written out
    as a part (see zstag.shards).
    """
    started = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [str(t.id) for t in tracks]
    if len(set(ids)) != len(ids):
        raise FeatureCacheError("the corpus has duplicate track ids")
    k, n = shard
    n_shards = (len(tracks) + shard_size - 1) // shard_size
    manifest = {
        "format": FORMAT_VERSION,
        "front_end": front_end.to_dict(),
        "shard_size": shard_size,
        "n_tracks": len(tracks),
        "n_shards": n_shards,
        "plan_sha256": plan_sha256(ids),
        "dtype": np.dtype(DTYPE).name,
        "source": source or {},
    }
    _check_or_write_manifest(folder, manifest)
    report = PreprocessReport(n_tracks=len(tracks), n_shards=n_shards)
    mine = [s for s in range(n_shards) if s % n == k - 1]
    remove_leftovers(folder, mine)
    todo = [s for s in mine if not shard_complete(folder, s)]
    report.shards_skipped = len(mine) - len(todo)
    if todo:  # shards will change: an index written before them would point at the old frames
        (folder / INDEX_FILE).unlink(missing_ok=True)
    tasks, owners, writers = [], [], {}
    fe_dict = front_end.to_dict()
    for s in todo:
        shard_tracks = tracks[s * shard_size : (s + 1) * shard_size]
        writers[s] = ShardWriter(folder, s, len(shard_tracks), front_end.n_mels, part_seconds, part_bytes)
        report.tracks_resumed += writers[s].done
        for t in shard_tracks[writers[s].done :]:
            tasks.append((str(t.path), fe_dict, float(getattr(t, "offset", 0.0) or 0.0), getattr(t, "duration", None)))
            owners.append((s, t))

    report_progress = progress if callable(progress) else (lambda *args, **fields: None)
    report_progress("preprocess", 0, len(tasks), failed=0)
    try:
        for (s, track), (frames, stats, error) in zip(owners, _map(tasks, workers)):
            failure = None
            if error is not None:
                failure = put_name(put_name({}, "id", str(track.id)), "path", str(track.path))
                failure["error"] = valid_text(error)
                report.failures.append(failure)
            if writers[s].add(track, frames, stats, failure):
                report.shards_done += 1
            report.tracks_done += 1
            report_progress("preprocess", report.tracks_done, len(tasks), failed=len(report.failures))
    except KeyboardInterrupt:  # Ctrl-C: the tracks done so far are kept for the next run
        for writer in writers.values():
            writer.write_part()
        raise
    # Failures of shards skipped by this run were reported by the run that wrote them; list them all.
    report.complete = all(shard_complete(folder, s) for s in range(n_shards))
    _write_failures(folder, n_shards)
    if report.complete:
        write_index(folder)
    report.seconds = time.perf_counter() - started
    return report


def _map(tasks: list[tuple], workers: int) -> Iterator[tuple]:
    """Results in task order; in-process for one worker, else a bounded window over a process pool.

    If a decoder crashes a worker, the tasks then in flight are retried one by one in a fresh
    one-worker pool, so only the file that crashes it fails ("decoder crashed").
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_compute_task, tasks)
        return
    from concurrent.futures.process import BrokenProcessPool

    pool, in_flight, next_task = _pool(workers), deque(), 0
    try:
        while in_flight or next_task < len(tasks):
            try:
                while next_task < len(tasks) and len(in_flight) < workers * IN_FLIGHT_PER_WORKER:
                    in_flight.append((next_task, pool.submit(_compute_task, tasks[next_task])))
                    next_task += 1
                result = in_flight[0][1].result()
            except BrokenProcessPool:
                pool.shutdown(cancel_futures=True)
                for index, _ in in_flight:
                    yield _isolated(tasks[index])
                in_flight.clear()
                pool = _pool(workers)
                continue
            in_flight.popleft()
            yield result
    finally:
        pool.shutdown(cancel_futures=True)


def _isolated(task: tuple) -> tuple:
    """Run one task alone in a fresh worker: the file that kills it is the one to blame."""
    from concurrent.futures.process import BrokenProcessPool

    with _pool(1) as pool:
        try:
            return pool.submit(_compute_task, task).result()
        except BrokenProcessPool:
            pass
    with _pool(1) as pool:
        try:
            pool.submit(int).result()
        except BrokenProcessPool:
            raise FeatureCacheError("worker processes die on start; try --workers 1") from None
    return None, None, f"{task[0]}: the decoder crashed"


def _init_worker(main_pid: int) -> None:
    from zstag.workers import blas_limit, keep_freed_memory, watch_main

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    watch_main(main_pid)  # a killed run leaves no worker, fork server or resource tracker behind
    blas_limit()  # one BLAS thread per worker: the workers already fill the cores
    keep_freed_memory()  # as the tag workers: no fresh pages faulted in for every file


def _pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    from zstag.workers import mp_context

    # the tag workers' fork server: the same preloaded modules and one-thread BLAS from the start
    return ProcessPoolExecutor(workers, mp_context=mp_context(), initializer=_init_worker, initargs=(os.getpid(),))


def _write_failures(folder: Path, n_shards: int) -> None:
    rows = []
    for s in range(n_shards):
        table = folder / f"{SHARD_PATTERN.format(s)}.json"
        if table.is_file():
            for failure in json.loads(table.read_text())["failures"]:
                row = put_name(put_name({}, "id", get_name(failure, "id")), "path", get_name(failure, "path"))
                rows.append({**row, "error": valid_text(failure["error"])})
    # as tag's csv: the *_bytes columns last, only when some name needs them
    extra = [key for key in ("id_bytes", "path_bytes") if any(key in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "path", "error", *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / FAILURES_FILE, buffer.getvalue().encode())


def write_index(folder: str | Path) -> Path:
    """Gather every shard table into ``index.parquet`` (id, shard, offset, n_frames, labels, artist, stats)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    entries = _entries_from_shard_tables(folder, _read_manifest(folder))
    table = pa.table(
        {
            "id": [valid_text(e.id) for e in entries],
            "id_bytes": pa.array([name_bytes(e.id) for e in entries], pa.string()),  # null: "id" is the id
            "shard": pa.array([e.shard for e in entries], pa.int32()),
            "offset": pa.array([e.offset for e in entries], pa.int64()),
            "n_frames": pa.array([e.n_frames for e in entries], pa.int32()),
            "labels": pa.array([list(e.labels) for e in entries], pa.list_(pa.string())),
            "artist": pa.array([e.artist for e in entries], pa.string()),
            "stats": pa.array([json.dumps(e.stats) if e.stats is not None else None for e in entries], pa.string()),
        }
    )
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    atomic_write(folder / INDEX_FILE, buffer.getvalue().to_pybytes())
    return folder / INDEX_FILE


# --- reading -------------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict:
    path = folder / CACHE_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FeatureCacheError(f"{folder}: not a feature cache (no {CACHE_FILE}; run `zstag preprocess`)") from None
    except (OSError, ValueError) as exc:
        raise FeatureCacheError(f"{path}: unreadable: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise FeatureCacheError(f"{path}: cache format {manifest.get('format')}, expected {FORMAT_VERSION}")
    return manifest


def _entries_from_shard_tables(folder: Path, manifest: dict) -> list[CachedTrack]:
    entries = []
    for s in range(manifest["n_shards"]):
        path = folder / f"{SHARD_PATTERN.format(s)}.json"
        if not path.is_file():
            continue
        try:
            tracks = json.loads(path.read_text())["tracks"]
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a cut copy of a shard, a bad sector
            raise FeatureCacheError(f"{path}: unreadable: {' '.join(str(exc).split())}; rerun `zstag preprocess` "
                                    "(or copy the shard again)") from None
        for t in tracks:
            entries.append(CachedTrack(get_name(t, "id"), tuple(t["labels"]), t["artist"], s, t["offset"],
                                       t["n_frames"], t.get("stats"))
            )
    return entries


class FeatureCache:
    """Read side of a cache folder: track table + memory-mapped shards (no code is executed on load)."""

    def __init__(self, folder: Path, manifest: dict, entries: list[CachedTrack]):
        self.folder = folder
        self.manifest = manifest
        self.front_end = FrontEnd.from_dict(manifest["front_end"])
        self.tracks = entries
        self.by_id = {e.id: e for e in entries}
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, folder: str | Path, allow_incomplete: bool = False, check_frames: bool = True) -> "FeatureCache":
        """check_frames: each shard's .npy must be there and whole (what training reads); without it, only
        the track tables are read (enough to make a split)."""
        folder = Path(folder)
        manifest = _read_manifest(folder)
        missing = [s for s in range(manifest["n_shards"]) if not (folder / f"{SHARD_PATTERN.format(s)}.json").is_file()]
        if missing and not allow_incomplete:
            raise FeatureCacheError(
                f"{folder}: {len(missing)} of {manifest['n_shards']} shards missing (first: {missing[0]}); "
                "finish `zstag preprocess` (or copy in the other machines' shards)"
            )
        entries = _entries_from_index(folder / INDEX_FILE) if (folder / INDEX_FILE).is_file() and not missing else None
        if entries is None:
            entries = _entries_from_shard_tables(folder, manifest)
            if (folder / INDEX_FILE).is_file() and not missing:  # damaged: the tables it gathers are sound
                try:
                    write_index(folder)
                except OSError:
                    pass  # a read-only cache: read from the tables again next time
        if check_frames:
            _check_shard_files(folder, manifest, entries, sorted(set(range(manifest["n_shards"])) - set(missing)))
        return cls(folder, manifest, entries)

    def __len__(self) -> int:
        return len(self.tracks)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self.by_id

    def shard(self, index: int) -> np.ndarray:
        """The shard's frames, memory-mapped; at most MAX_OPEN_SHARDS stay open (each map holds a file descriptor)."""
        array = self._shards.get(index)
        if array is None:
            path = self.folder / f"{SHARD_PATTERN.format(index)}.npy"
            array = self._shards[index] = np.load(path, mmap_mode="r", allow_pickle=False)
            if len(self._shards) > MAX_OPEN_SHARDS:
                self._shards.popitem(last=False)
        else:
            self._shards.move_to_end(index)
        return array

    def frames(self, track_id: str) -> np.ndarray:
        """float16 [n_frames, n_mels], a read-only view of the memory map."""
        e = self.by_id[track_id]
        return self.shard(e.shard)[e.offset : e.offset + e.n_frames]

    def mel(self, track_id: str) -> np.ndarray:
        """float32 [n_mels, n_frames], as zstag.audio.log_mel returned it (to float16 precision)."""
        return np.ascontiguousarray(self.frames(track_id).T, dtype=np.float32)

    def crop(self, track_id: str, start: int, length: int) -> np.ndarray:
        """float32 [n_mels, length] from frame ``start``; a track shorter than ``length`` is zero-padded."""
        e = self.by_id[track_id]
        start = max(0, min(start, e.n_frames - length))
        view = self.shard(e.shard)[e.offset + start : e.offset + min(start + length, e.n_frames)]
        out = np.zeros((length, view.shape[1]), dtype=np.float32)
        out[: len(view)] = view
        return out.T

    def __getstate__(self):  # memory maps are reopened in each DataLoader worker
        state = dict(self.__dict__)
        state["_shards"] = OrderedDict()
        return state


def _check_shard_files(folder: Path, manifest: dict, entries: list[CachedTrack], shards: list[int]) -> None:
    """Each listed shard's .npy is there, as long as its header says, and of the shape its table gives: a
    missing or cut file is one line now, not a crash mid-training. Reads headers only (a few hundred bytes)."""
    frames = dict.fromkeys(shards, 0)
    for e in entries:
        frames[e.shard] = frames.get(e.shard, 0) + e.n_frames  # a shard's tracks fill it back to back
    expected = (np.dtype(DTYPE), int(manifest["front_end"]["n_mels"]))
    for s in shards:
        path = folder / f"{SHARD_PATTERN.format(s)}.npy"
        problem = npy_problem(path, frames[s], *expected)
        if problem:
            raise FeatureCacheError(f"{path}: {problem}; rerun `zstag preprocess`")


def _entries_from_index(path: Path) -> list[CachedTrack] | None:
    """The index's tracks; None when it is damaged (it only gathers the shard tables: rebuilt from them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path).to_pydict()
    except (OSError, pa.ArrowException):
        return None
    raw = table.get("id_bytes") or [None] * len(table["id"])  # no such column in an index before it came
    table["id"] = [i if b is None else name_from_bytes(b) for i, b in zip(table["id"], raw)]
    return [
        CachedTrack(i, tuple(labels), artist, int(s), int(o), int(n), json.loads(stats) if stats else None)
        for i, s, o, n, labels, artist, stats in zip(
            table["id"], table["shard"], table["offset"], table["n_frames"], table["labels"], table["artist"],
            table["stats"],
        )
    ]


def open_cache(folder: str | Path) -> FeatureCache:
    return FeatureCache.open(folder)


def cache_corpus(folder: str | Path):
    """A zstag.corpora.Corpus of the tracks in a feature cache (for making a split without the audio)."""
    from zstag.corpora import Corpus, Track

    cache = FeatureCache.open(folder, check_frames=False)  # the track tables only: no frames are read
    source = cache.manifest.get("source") or {}
    tracks = sorted((Track(e.id, Path(e.id), e.labels, e.artist) for e in cache.tracks), key=lambda t: t.id)
    labels = sorted({label for t in tracks for label in t.labels})
    return Corpus(
        name=source.get("name") or Path(folder).name, kind=source.get("kind") or "cache", root=Path(folder),
        tracks=tracks, labels=labels, single_label=all(len(t.labels) == 1 for t in tracks),
        options=dict(source.get("options") or {}),
    )
