"""Writing results out, shared by tag, search and similar: records as valid UTF-8 whatever the file names,
and text to stdout or atomically to a file, with one line on stderr when it cannot be written.

A file name that is not UTF-8 (os.fsdecode's lone surrogates) is written with U+FFFD for each bad byte in
"path" (paths.valid_text), and losslessly in "path_bytes" (paths.name_bytes: the bytes percent-encoded as in
a URL): a key of its own in json and jsonl, a last csv column present only when some name needs it.
"""

from __future__ import annotations

import csv
import io
import os
import sys

from zstag.paths import atomic_write, name_bytes, valid_text


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


def write_output(text: str, output: str | None) -> bool:
    """Write text to stdout (output None) or atomically to the file output (a link's target replaced);
    False, with one line on stderr, when it could not be written. Used by tag, search and similar."""
    if output is None:
        error = write_stdout(text)
        if error:
            print(f"zstag: error: cannot write to stdout: {error}", file=sys.stderr)
            return False
        return True
    try:  # tag's formats are valid Unicode (render); an m3u8 keeps a non-UTF-8 name's bytes: the player opens it
        atomic_write(output, text.encode("utf-8", "surrogateescape"), follow_links=True)
    except OSError as exc:
        print(f"zstag: error: {output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def write_stdout(text: str) -> str | None:
    """Write text to stdout and flush it; None when it got there, else the cause (stdout closed, disk full,
    broken pipe). Where stdout's encoding cannot carry a character (PYTHONIOENCODING=ascii), the text goes
    out as UTF-8, the encoding of every format."""
    if sys.stdout is None:  # Python started with descriptor 1 closed
        return "it is closed"
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8", "replace"))
        sys.stdout.flush()
    except (OSError, ValueError) as exc:  # ValueError: sys.stdout closed inside Python
        try:  # what is still buffered goes nowhere, instead of failing again (a traceback) at exit
            fd = sys.stdout.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError):
            pass
        return getattr(exc, "strerror", None) or str(exc)
    return None


def terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size().columns
