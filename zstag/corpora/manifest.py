"""CSV manifest: columns path,labels[,artist]; labels separated by ';'; other columns ignored.

The root is the manifest file itself or a folder holding manifest.csv. Relative paths are relative
to the manifest's folder; the path as written is the track id. Rows whose audio file is missing go
to corpus.missing, malformed rows to corpus.skipped; neither stops the read.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from zstag.corpora import Corpus, CorpusError, build_corpus, unique

MANIFEST_NAME = "manifest.csv"
LABEL_SEPARATOR = ";"
REQUIRED_COLUMNS = ("path", "labels")
EXPECTED = f"expected {MANIFEST_NAME} with columns path,labels[,artist] (labels separated by '{LABEL_SEPARATOR}')"


def manifest_file(root: Path) -> Path:
    if root.is_file():
        return root
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CorpusError(f"{root}: not a CSV corpus root: {EXPECTED}")
    return path


def read(root: Path, *, vocabulary=None, top_n: Optional[int] = None, min_tracks: int = 1,
         keep_untagged: bool = False) -> Corpus:
    root = Path(root)
    path = manifest_file(root)
    base = path.parent
    name = base.resolve().name if path.name == MANIFEST_NAME else path.stem
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            absent = [c for c in REQUIRED_COLUMNS if c not in columns]
            if absent:
                raise CorpusError(f"{path}: not a CSV manifest: missing column {', '.join(absent)}; {EXPECTED}")
            path_col, labels_col, artist_col = columns["path"], columns["labels"], columns.get("artist")
            rows, skipped = [], []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                rel = (row.get(path_col) or "").strip()
                if not rel:
                    skipped.append(f"{where}: empty path")
                    continue
                labels = unique((row.get(labels_col) or "").split(LABEL_SEPARATOR))
                artist = (row.get(artist_col) or "").strip() if artist_col else ""
                rows.append((rel, base / rel, labels, artist or None))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not a UTF-8 CSV file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise CorpusError(f"{path}: malformed CSV: {e}") from None
    options = {"vocabulary": vocabulary, "top_n": top_n, "min_tracks": min_tracks, "keep_untagged": keep_untagged}
    return build_corpus(name, "csv", root, rows, vocabulary=vocabulary, top_n=top_n, min_tracks=min_tracks,
                        keep_untagged=keep_untagged, skipped=skipped, options=options)
