"""Results as text, shared by tag, search and similar: records as valid UTF-8 whatever the file names
(cli_run writes the text out).

A file name that is not UTF-8 (os.fsdecode's lone surrogates) is written with U+FFFD for each bad byte in
"path" (paths.valid_text), and losslessly in "path_bytes" (paths.name_bytes: the bytes percent-encoded as in
a URL): a key of its own in json and jsonl, a last csv column present only when some name needs it.
"""

from __future__ import annotations

import csv
import io

from zstag.paths import name_bytes, valid_text


def portable(record: dict) -> dict:
    """A record for json/jsonl: "path" as valid Unicode, "path_bytes" after it for a name that is not UTF-8."""
    out = {"path": valid_text(record["path"])}
    raw = name_bytes(record["path"])
    if raw is not None:
        out["path_bytes"] = raw
    out.update((key, value) for key, value in record.items() if key != "path")
    return out


def csv_text(header: list[str], rows: list[list]) -> str:
    """CSV with a header; each row's cell under "path" is a file name, written as valid Unicode, with a last
    "path_bytes" column when some name is not UTF-8."""
    column = header.index("path")
    raw = [name_bytes(row[column]) for row in rows]
    extra = any(b is not None for b in raw)  # the path_bytes column, only when some name needs it
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + (["path_bytes"] if extra else []))
    for row, b in zip(rows, raw):
        row = list(row)
        row[column] = valid_text(row[column])
        writer.writerow(row + ([b or ""] if extra else []))
    return out.getvalue()
