"""MagnaTagATune: annotations_final.csv + the mp3 tree (0/ ... f/).

annotations_final.csv is tab-separated with every field quoted: clip_id, 188 tag columns holding
"0"/"1", mp3_path ("f/artist-album-01-title-30-59.mp3"). clip_info_final.csv (same dialect) gives
each clip's artist; without it artist is None. The usual benchmark vocabulary is top_n=50.
Clips without any (kept) tag are dropped unless keep_untagged=True.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from zstag.corpora import Corpus, CorpusError, build_corpus

ANNOTATIONS = "annotations_final.csv"
CLIP_INFO = "clip_info_final.csv"
AUDIO_SUBFOLDERS = (".", "mp3", "audio")     # where the 0/ ... f/ folders may sit, next to the CSV
EXPECTED = f"expected {ANNOTATIONS} (tab-separated: clip_id, tag columns, mp3_path) and the mp3 folders 0/ ... f/"


def _read_tsv(path: Path, errors: str = "strict") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows of a tab-separated, double-quoted file."""
    try:
        with open(path, newline="", encoding="utf-8", errors=errors) as f:
            reader = csv.reader(f, delimiter="\t", quotechar='"')
            header = [h.strip() for h in next(reader, [])]
            return header, [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise CorpusError(f"{path}: malformed tab-separated file: {e}") from None


def _artists(path: Path, skipped: list[str]) -> dict[str, str]:
    header, rows = _read_tsv(path, errors="replace")   # artists only: a stray byte must not stop the read
    if "clip_id" not in header or "artist" not in header:
        skipped.append(f"{path}: no clip_id/artist columns, artists unknown")
        return {}
    i_clip, i_artist = header.index("clip_id"), header.index("artist")
    return {row[i_clip].strip(): row[i_artist].strip() for _, row in rows if len(row) == len(header)}


def _audio_base(folder: Path, audio: Optional[Path], rel_paths: list[str]) -> Path:
    """The folder under which the mp3_path values exist: the one option given, else the best match."""
    if audio is not None:
        return Path(audio).expanduser()
    candidates = [folder / sub for sub in AUDIO_SUBFOLDERS if (folder / sub).is_dir()]
    sample = rel_paths[:: max(1, len(rel_paths) // 200)]   # ~200 stat calls per candidate is enough to choose
    return max(candidates, key=lambda base: sum(os.path.isfile(base / rel) for rel in sample))


def read(root: Path, *, audio: Optional[Path] = None, vocabulary=None, top_n: Optional[int] = None,
         min_tracks: int = 1, keep_untagged: bool = False, clip_info: Optional[Path] = None) -> Corpus:
    root = Path(root)
    path = root if root.is_file() else root / ANNOTATIONS
    if not path.is_file():
        raise CorpusError(f"{root}: not an MTAT root: {EXPECTED}")
    # surrogateescape: an undecodable byte in mp3_path still maps back to the file's real name
    header, rows = _read_tsv(path, errors="surrogateescape")
    if "clip_id" not in header or "mp3_path" not in header or len(header) < 3:
        raise CorpusError(f"{path}: not MTAT annotations: {EXPECTED}")
    i_clip, i_path = header.index("clip_id"), header.index("mp3_path")
    tag_columns = [(i, tag) for i, tag in enumerate(header) if i not in (i_clip, i_path)]

    skipped: list[str] = []
    info = Path(clip_info) if clip_info else path.parent / CLIP_INFO
    artists = _artists(info, skipped) if info.is_file() else {}

    parsed = []
    for line, row in rows:
        if len(row) != len(header):
            skipped.append(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
            continue
        clip_id, rel = row[i_clip].strip(), row[i_path].strip()
        if not clip_id or not rel:
            skipped.append(f"{path}:{line}: empty clip_id or mp3_path")
            continue
        labels = tuple(tag for i, tag in tag_columns if row[i].strip() not in ("", "0"))
        parsed.append((clip_id, rel, labels, artists.get(clip_id)))

    base = _audio_base(path.parent, audio, [rel for _, rel, _, _ in parsed])
    rows_out = [(clip_id, base / rel, labels, artist) for clip_id, rel, labels, artist in parsed]
    options = {"vocabulary": vocabulary, "top_n": top_n, "min_tracks": min_tracks, "keep_untagged": keep_untagged}
    return build_corpus("mtat", "mtat", root, rows_out, single_label=False, vocabulary=vocabulary, top_n=top_n,
                        min_tracks=min_tracks, keep_untagged=keep_untagged, skipped=skipped, options=options,
                        sources=[path, info] if info.is_file() else [path],
                        expected=f"mp3_path values not found under {base}; pass audio=<folder holding 0/ ... f/>")
