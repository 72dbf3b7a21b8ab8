"""CSV manifest: columns path,labels[,artist]; labels separated by ';'; other columns ignored.

The root is the manifest file itself or a folder holding manifest.csv. Relative paths are relative
to the manifest's folder; the path as written is the track id. Rows whose audio file is missing go
to corpus.missing; malformed rows (more fields than the header, no labels field), rows without labels
and rows naming a file already listed (under any spelling of its path) go to corpus.skipped, one
"manifest.csv:LINE: cause" each; none of them stops the read. A row is one line: a field running over
lines (an unterminated quote, which would swallow the rest of the file) is an error.
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
            reader = csv.reader(f)
            header = next(reader, [])
            columns = {c.strip().lower(): i for i, c in enumerate(header)}
            absent = [c for c in REQUIRED_COLUMNS if c not in columns]
            if absent:
                raise CorpusError(f"{path}: not a CSV manifest: missing column {', '.join(absent)}; {EXPECTED}")
            i_path, i_labels, i_artist = columns["path"], columns["labels"], columns.get("artist")
            rows, skipped = [], []
            end = reader.line_num
            for fields in reader:
                start, end = end + 1, reader.line_num  # a quoted line break makes a row span lines
                where = f"{path}:{start}"
                if not fields:  # a blank line
                    continue
                if start != end:
                    raise CorpusError(f"{where}: unterminated quote? a quoted field runs on to line {end}")
                while len(fields) > len(header) and not fields[-1].strip():
                    fields = fields[:-1]  # empty trailing fields (a spreadsheet's trailing commas) are no data
                if len(fields) > len(header):
                    skipped.append(f"{where}: {len(fields)} fields, expected {len(header)} "
                                   f"(labels are separated by '{LABEL_SEPARATOR}'; quote a field holding a comma)")
                    continue
                rel = fields[i_path].strip() if i_path < len(fields) else ""
                if not rel:
                    skipped.append(f"{where}: empty path")
                    continue
                if i_labels >= len(fields):
                    skipped.append(f"{where}: no labels field")
                    continue
                labels = unique(fields[i_labels].split(LABEL_SEPARATOR))
                if not labels and not keep_untagged:
                    skipped.append(f"{where}: no labels")
                    continue
                artist = fields[i_artist].strip() if i_artist is not None and i_artist < len(fields) else ""
                rows.append((rel, base / rel, labels, artist or None, where))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not a UTF-8 CSV file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise CorpusError(f"{path}: malformed CSV: {e}") from None
    options = {"vocabulary": vocabulary, "top_n": top_n, "min_tracks": min_tracks, "keep_untagged": keep_untagged}
    return build_corpus(name, "csv", root, rows, vocabulary=vocabulary, top_n=top_n, min_tracks=min_tracks,
                        keep_untagged=keep_untagged, skipped=skipped, options=options, sources=[path])
