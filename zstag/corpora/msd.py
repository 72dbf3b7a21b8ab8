"""Million Song Dataset with Last.fm tags.

Tags come from the published lastfm_tags.db (SQLite: tids(tid), tags(tag), tid_tag(tid, tag, val) where
tid_tag.tid and tid_tag.tag are ROWIDs of tids and tags, val the Last.fm weight 0-100), or else from the
per-track JSON files (lastfm_train/A/A/A/TRAAAAW128F429D538.json: track_id, artist, title,
tags [[tag, "weight"], ...], ...). Audio is found by track id: any file named <TRACKID>.<audio ext> at any
depth under the audio root (one directory walk builds the id -> path table; no per-track glob).
Artists come from unique_tracks.txt (TRACKID<SEP>SONGID<SEP>ARTIST<SEP>TITLE), track_metadata.db
(table songs), or the JSON files, whichever is found first.

min_val: tags with a lower Last.fm weight are ignored. The default 0 keeps every annotation; weights are
relative to the track's strongest tag (100), and 50 is a common stricter choice for cleaner labels.
top_n / vocabulary / min_tracks choose the label set from frequencies over all tagged tracks
(e.g. top_n=50 for the usual MSD top-50 benchmark vocabulary), not only those with audio at hand.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from zstag.corpora import Corpus, CorpusError, build_corpus, is_audio, select_labels, unique
from zstag.paths import walk

TAGS_DB = "lastfm_tags.db"
UNIQUE_TRACKS = "unique_tracks.txt"
METADATA_DB = "track_metadata.db"
TRACK_ID = re.compile(r"^TR[A-Z0-9]{16}$")
SEPARATOR = "<SEP>"
DEFAULT_MIN_VAL = 0.0
EXPECTED = f"expected {TAGS_DB} or Last.fm JSON files (lastfm_train/A/A/A/TRAAAAW128F429D538.json)"


@dataclass
class Scan:
    """What one walk of a folder found: audio and JSON files by track id, plus the named metadata files."""
    audio: dict[str, str] = field(default_factory=dict)
    json: dict[str, str] = field(default_factory=dict)
    named: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0


def scan(folder: Path, audio: bool = True, other: bool = True) -> Scan:
    found = Scan()
    depth_of: dict[str, int] = {}
    base_depth = str(folder).rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in walk(folder, follow_links=True):  # no recursion: any depth
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        depth = dirpath.count(os.sep) - base_depth
        for name in filenames:
            stem = name.partition(".")[0]
            if TRACK_ID.match(stem):
                if name.endswith(".json"):
                    table = found.json if other else None
                else:
                    table = found.audio if audio and is_audio(name) else None
                if table is not None:
                    path = os.path.join(dirpath, name)
                    if stem in table:
                        found.duplicates += table is found.audio
                        path = min(path, table[stem])   # deterministic whatever the walk order
                    table[stem] = path
            elif other and name in (TAGS_DB, UNIQUE_TRACKS, METADATA_DB):
                path = os.path.join(dirpath, name)
                if name not in found.named or (depth, path) < (depth_of[name], found.named[name]):
                    found.named[name], depth_of[name] = path, depth
    return found


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
        con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.Error as e:
        raise CorpusError(f"{path}: not a readable SQLite database ({e})") from None


def _db_tags(path: Path, min_val: float, vocabulary, top_n, min_tracks: int) -> dict[str, tuple[str, ...]]:
    """track id -> labels from lastfm_tags.db, the label choice already applied (in SQL, for speed)."""
    con = _connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"tids", "tags", "tid_tag"} <= tables:
            raise CorpusError(f"{path}: not a Last.fm tags database: expected tables tids, tags, tid_tag")
        tag_names = dict(con.execute("SELECT ROWID, tag FROM tags"))
        # min_val <= 0 keeps every row: no WHERE on val lets SQLite count from the tag index alone (~10x faster);
        # with a threshold, NOT INDEXED makes it one sequential scan instead of an index walk with row lookups.
        where = "" if min_val <= 0 else " NOT INDEXED WHERE val >= ?"
        args = () if min_val <= 0 else (min_val,)
        counts: Counter = Counter()
        for tag_row, n in con.execute(f"SELECT tag, COUNT(*) FROM tid_tag{where} GROUP BY tag", args):
            if tag_row in tag_names:
                counts[tag_names[tag_row]] += n
        query = f"SELECT tid, tag FROM tid_tag{where}"
        if vocabulary is not None or top_n is not None or min_tracks > 1:
            keep = set(select_labels(counts, vocabulary, top_n, min_tracks, str(path)))
            con.execute("CREATE TEMP TABLE keep_tags (tag INTEGER PRIMARY KEY)")
            con.executemany("INSERT INTO keep_tags VALUES (?)", ((r,) for r, t in tag_names.items() if t in keep))
            query = ("SELECT tid, tag FROM tid_tag NOT INDEXED WHERE tag IN (SELECT tag FROM keep_tags)"
                     + (" AND val >= ?" if min_val > 0 else ""))
        per_track: dict[int, list[str]] = {}
        for tid_row, tag_row in con.execute(query, args):
            name = tag_names.get(tag_row)
            if name is not None:
                per_track.setdefault(tid_row, []).append(name)
        return {tid: unique(per_track.get(row, ())) for row, tid in con.execute("SELECT ROWID, tid FROM tids")}
    except sqlite3.Error as e:
        raise CorpusError(f"{path}: cannot read Last.fm tags ({e})") from None
    finally:
        con.close()


def _json_track(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _json_tags(paths: dict[str, str], min_val: float, skipped: list[str]):
    """track id -> (labels, artist) from the Last.fm JSON files."""
    out = {}
    for tid, path in sorted(paths.items()):
        try:
            data = _json_track(path)
            tags = [(str(tag), float(weight)) for tag, weight in data.get("tags") or []]
        except (OSError, ValueError, TypeError) as e:
            skipped.append(f"{path}: unreadable Last.fm JSON ({e})")
            continue
        artist = data.get("artist")
        labels = unique(tag for tag, weight in tags if weight >= min_val)
        out[tid] = (labels, artist if isinstance(artist, str) else None)
    return out


def _artists(scan_found: Scan, metadata: Optional[Path], wanted: set[str], skipped: list[str]) -> dict[str, str]:
    """track id -> artist name for the wanted ids, from the first metadata source available."""
    if metadata is None:
        metadata = scan_found.named.get(UNIQUE_TRACKS) or scan_found.named.get(METADATA_DB)
    if metadata is not None:
        metadata = Path(metadata)
        if metadata.suffix == ".db":
            con = _connect(metadata)
            try:
                rows = con.execute("SELECT track_id, artist_name FROM songs")
                return {tid: artist for tid, artist in rows if tid in wanted and artist}
            except sqlite3.Error as e:
                raise CorpusError(f"{metadata}: not an MSD track_metadata.db: expected table songs ({e})") from None
            finally:
                con.close()
        out = {}
        try:
            with open(metadata, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split(SEPARATOR)
                    if len(parts) >= 3 and parts[0] in wanted and parts[2]:
                        out[parts[0]] = parts[2]
        except OSError as e:
            raise CorpusError(f"{metadata}: cannot read ({e.strerror})") from None
        return out
    out = {}
    for tid in sorted(wanted & scan_found.json.keys()):
        try:
            artist = _json_track(scan_found.json[tid]).get("artist")
        except (OSError, ValueError) as e:
            skipped.append(f"{scan_found.json[tid]}: unreadable Last.fm JSON ({e})")
            continue
        if isinstance(artist, str) and artist:
            out[tid] = artist
    return out


def read(root: Path, *, audio: Optional[Path] = None, tags: Optional[Path] = None, metadata: Optional[Path] = None,
         min_val: float = DEFAULT_MIN_VAL, vocabulary=None, top_n: Optional[int] = None, min_tracks: int = 1,
         keep_untagged: bool = False) -> Corpus:
    """root: a folder with lastfm_tags.db and/or the JSON tree (and audio, unless `audio` names its folder),
    or the lastfm_tags.db file itself. tags / metadata name those files explicitly."""
    root = Path(root)
    if tags is None and root.is_file():
        tags = root
    folder = root if root.is_dir() else root.parent
    audio_root = Path(audio).expanduser() if audio is not None else folder
    found = scan(folder, audio=audio is None)
    if audio is not None:
        if not audio_root.is_dir():
            raise CorpusError(f"{audio_root}: no such audio folder")
        audio_found = scan(audio_root, other=False)
        found.audio, found.duplicates = audio_found.audio, audio_found.duplicates
    if tags is not None and Path(tags).is_dir():
        found.json = scan(Path(tags), audio=False).json
        tags = None
    elif tags is None:
        tags = found.named.get(TAGS_DB)

    if tags is None and not found.json:
        raise CorpusError(f"{root}: not an MSD root: {EXPECTED}")
    if not found.audio:
        raise CorpusError(f"{audio_root}: no MSD audio found: expected files named <track id>.<audio ext>, "
                          "e.g. TRAAAAW128F429D538.mp3, at any depth")

    skipped: list[str] = []
    options = {"min_val": min_val, "vocabulary": vocabulary, "top_n": top_n, "min_tracks": min_tracks,
               "keep_untagged": keep_untagged}
    if tags is not None:
        labels_by_id = _db_tags(Path(tags), min_val, vocabulary, top_n, min_tracks)
        artists = _artists(found, metadata, {t for t in found.audio if labels_by_id.get(t) or keep_untagged}, skipped)
        select = {}   # already applied in SQL
    else:
        from_json = _json_tags(found.json, min_val, skipped)
        labels_by_id = {tid: labels for tid, (labels, _) in from_json.items()}
        artists = {tid: artist for tid, (_, artist) in from_json.items() if artist}
        if metadata is not None:
            artists.update(_artists(found, metadata, set(found.audio), skipped))
        select = {"vocabulary": vocabulary, "top_n": top_n, "min_tracks": min_tracks}
    if found.duplicates:
        skipped.append(f"{audio_root}: {found.duplicates} track ids have several audio files; "
                       "the first path in sort order is used")
    rows = [(tid, found.audio.get(tid), labels, artists.get(tid)) for tid, labels in labels_by_id.items()]
    # Every metadata file found counts as read (the tags, the JSON files, the artist tables): none is an output's.
    sources = [p for p in (tags, metadata) if p is not None] + sorted(found.named.values())
    sources = list(dict.fromkeys(Path(p) for p in sources + sorted(found.json.values())))
    return build_corpus("msd", "msd", root, rows, single_label=False, keep_untagged=keep_untagged, skipped=skipped,
                        options=options, check_files=False, sources=sources,
                        expected=f"no audio under {audio_root} named after a tagged track id", **select)
