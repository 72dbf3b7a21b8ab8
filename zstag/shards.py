"""The shard files of a feature cache (zstag.features): written whole, or in parts while they fill.

A shard of the plan holds a fixed run of tracks (``--shard-size``). While it is computed, the tracks
done so far are written out as a *part* (``shard-00000.part-00003.npy`` + ``.json``, the table last)
whenever the shard has been open too long or holds too many bytes: a killed run keeps its parts, and the
next run starts the shard after them. When its last track is done, the parts and the tracks still in
memory become ``shard-00000.npy`` + ``.json``, byte for byte what one uninterrupted run writes, and the
parts are removed. The parts are copied from their memory maps, so no more than one part's frames are
ever held in memory.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from zstag.paths import atomic_write, put_name

SHARD_PATTERN = "shard-{:05d}"
PART_PATTERN = SHARD_PATTERN + ".part-{:05d}"
DTYPE = np.float16


def write_json(path: Path, payload) -> None:
    atomic_write(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def shard_complete(folder: Path, shard: int) -> bool:
    name = SHARD_PATTERN.format(shard)
    table, frames = folder / f"{name}.json", folder / f"{name}.npy"
    if not (table.is_file() and frames.is_file()):
        return False
    try:
        meta = json.loads(table.read_text())
        array = np.load(frames, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.shape[0] == meta["total_frames"]


def remove_leftovers(folder: Path, shards: list[int]) -> None:
    """Temporary files of a killed run, and parts of shards since completed; this run's shards only:
    other machines may be writing theirs here."""
    for shard in shards:
        stale = list(folder.glob(f".{SHARD_PATTERN.format(shard)}.*.tmp"))
        if shard_complete(folder, shard):
            stale += _part_files(folder, shard)
        for path in stale:
            path.unlink(missing_ok=True)


def _part_files(folder: Path, shard: int) -> list[Path]:
    return sorted(folder.glob(f"{SHARD_PATTERN.format(shard)}.part-*.*"))


def _part_number(path: Path) -> int | None:
    found = re.search(r"\.part-(\d+)\.(?:json|npy)$", path.name)
    return int(found.group(1)) if found else None


def npy_problem(path: Path, n_frames: int, dtype: np.dtype, n_mels: int) -> str | None:
    """Why the .npy file at path is not float [n_frames, n_mels] of dtype, whole; None if it is. Reads the
    header only (a few hundred bytes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, found = read_header(f)
            data_start = f.tell()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except ValueError:  # cut inside the header, or not a .npy file
        return f"truncated or not a .npy file ({size} bytes)"
    needed = data_start + math.prod(shape) * found.itemsize
    if size < needed:
        return f"truncated: {size} of {needed} bytes"
    if found != dtype or tuple(shape) != (n_frames, n_mels):
        return f"holds {found} {tuple(shape)}, its table says {dtype} ({n_frames}, {n_mels})"
    return None


def _npy_pieces(n_mels: int, arrays: list[np.ndarray]) -> list:
    """The bytes of np.save(np.concatenate(arrays)) as pieces for atomic_write: header, then each array's."""
    header = io.BytesIO()
    shape = (sum(len(a) for a in arrays), n_mels)
    npy_format.write_array_header_1_0(  # the header np.save writes (version 1.0 fits any 2-D shape)
        header, {"descr": npy_format.dtype_to_descr(np.dtype(DTYPE)), "fortran_order": False, "shape": shape})
    data = [np.ascontiguousarray(a, dtype=DTYPE).reshape(-1).view(np.uint8) for a in arrays if len(a)]
    return [header.getvalue()] + data


class ShardWriter:
    """One shard of the plan as its tracks arrive, in plan order (``add``), from where earlier runs'
    parts left it (``done`` tracks). A part is written once the shard has been open ``part_seconds``
    (since its first track, or its last part) or its frames in memory reach ``part_bytes``."""

    def __init__(self, folder: Path, shard: int, n_tracks: int, n_mels: int, part_seconds: float, part_bytes: int):
        self.folder, self.shard, self.n_tracks, self.n_mels = folder, shard, n_tracks, n_mels
        self.part_seconds, self.part_bytes = part_seconds, part_bytes
        self.parts = self._usable_parts()
        self.done = sum(p["count"] for p in self.parts)  # tracks written in parts
        self._clear()

    def _clear(self) -> None:
        self.rows: list[tuple] = []  # (track, frames, stats)
        self.failures: list[dict] = []
        self.nbytes, self.opened = 0, None

    def _usable_parts(self) -> list[dict]:
        """The parts that continue each other from the shard's first track, whole; the rest are removed
        (frames whose table a kill prevented, a damaged part and those after it): their tracks are computed
        again."""
        parts: list[dict] = []
        for table in sorted(self.folder.glob(f"{SHARD_PATTERN.format(self.shard)}.part-*.json")):
            covered = sum(p["count"] for p in parts)
            try:
                meta = json.loads(table.read_text())
                usable = (_part_number(table) == len(parts) and meta["first"] == covered
                          and len(meta["tracks"]) + len(meta["failures"]) == meta["count"] > 0
                          and covered + meta["count"] < self.n_tracks  # the last track completes the shard
                          and not npy_problem(table.with_suffix(".npy"), meta["total_frames"], np.dtype(DTYPE),
                                              self.n_mels))
            except (OSError, ValueError, KeyError, TypeError):
                usable = False
            if not usable:
                break
            parts.append(meta)
        for path in _part_files(self.folder, self.shard):
            number = _part_number(path)
            if number is not None and number >= len(parts):
                path.unlink(missing_ok=True)
        return parts

    @property
    def complete(self) -> bool:
        return self.done + len(self.rows) + len(self.failures) == self.n_tracks

    def add(self, track, frames, stats, failure: dict | None) -> bool:
        """A track's frames (or its failure); True once this completes the shard and it is written."""
        if failure is not None:
            self.failures.append(failure)
        else:
            self.rows.append((track, frames, stats))
            self.nbytes += frames.nbytes
        if self.complete:
            self.write_shard()
            return True
        self.opened = self.opened if self.opened is not None else time.monotonic()
        if self.nbytes >= self.part_bytes or time.monotonic() - self.opened >= self.part_seconds:
            self.write_part()
        return False

    def _table(self) -> tuple[list[dict], int]:
        tracks, offset = [], 0
        for track, frames, stats in self.rows:
            row = put_name({}, "id", str(track.id))  # "id_bytes" too for an id that is not UTF-8
            tracks.append({**row, "labels": list(track.labels), "artist": track.artist,
                           "offset": offset, "n_frames": int(len(frames)), "stats": stats})
            offset += len(frames)
        return tracks, offset

    def write_part(self) -> None:
        """The tracks in memory (if any) as the shard's next part."""
        count = len(self.rows) + len(self.failures)
        if not count:
            return
        name = PART_PATTERN.format(self.shard, len(self.parts))
        tracks, total = self._table()
        atomic_write(self.folder / f"{name}.npy", _npy_pieces(self.n_mels, [f for _, f, _ in self.rows]))
        meta = {"shard": self.shard, "part": len(self.parts), "first": self.done, "count": count,
                "total_frames": total, "tracks": tracks, "failures": self.failures}
        write_json(self.folder / f"{name}.json", meta)  # last: marks the part complete
        self.parts.append(meta)
        self.done += count
        self._clear()

    def write_shard(self) -> None:
        """The parts, then the tracks in memory, as the shard's frames and then its table (which marks it
        complete); then the parts go."""
        arrays, tracks, offset, failures = [], [], 0, []
        for i, meta in enumerate(self.parts):
            if meta["total_frames"]:
                path = self.folder / f"{PART_PATTERN.format(self.shard, i)}.npy"
                arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
            tracks += [{**t, "offset": t["offset"] + offset} for t in meta["tracks"]]
            offset += meta["total_frames"]
            failures += meta["failures"]
        mine, total = self._table()
        tracks += [{**t, "offset": t["offset"] + offset} for t in mine]
        arrays += [frames for _, frames, _ in self.rows]
        name = SHARD_PATTERN.format(self.shard)
        atomic_write(self.folder / f"{name}.npy", _npy_pieces(self.n_mels, arrays))
        del arrays  # the memory maps
        write_json(self.folder / f"{name}.json", {"shard": self.shard, "total_frames": offset + total,
                                                  "tracks": tracks, "failures": failures + self.failures})
        for path in _part_files(self.folder, self.shard):
            path.unlink(missing_ok=True)
