"""The inputs of `zstag embed`: local files and folders (walked as tag walks them), text files of paths
(--from-list: one path per line, taken as it is but for the line end; "-" reads stdin), and URIs
"scheme://…" read through pyarrow.fs (file://, s3://, gs://, hdfs:// where pyarrow has that filesystem): a
folder URI is listed recursively, a file URI hashed by streaming it (uri_digest) and fetched into a temporary
file to decode (fetched). Anything that does not start with "scheme://" is a local path."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zstag.errors import UsageError

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # "scheme://": a URI; anything else is a local path


class InputError(UsageError):
    """Inputs that cannot be used at all (an unreadable list file, a URI scheme pyarrow lacks): one line."""


@dataclass
class Source:
    """An input file: name is what its row says (an absolute local path, or the URI); local is the file
    to open (None for a URI). digest and size are filled by plan()."""

    name: str
    local: str | None
    digest: str | None = None
    size: int | None = None
    fetch_error: str | None = None  # a URI that could not be read: its one line


def is_uri(text: str) -> bool:
    return bool(URI.match(text))


def read_list(path: str) -> list[str]:
    """The paths of a list file, one per line (bytes kept: os.fsdecode); blank lines skipped; "-": stdin."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the list of paths: {exc.strerror or exc}") from None
    return [os.fsdecode(line.rstrip(b"\r")) for line in data.split(b"\n") if line.strip()]


def gather(inputs: list[str], extensions: frozenset[str]) -> tuple[list[Source], list[str], int]:
    """(sources in discovery order, one-line problems, duplicate paths skipped): local files and folders as
    tag finds them (tagger.find_audio_files), URIs through pyarrow.fs."""
    from zstag.tagger import find_audio_files

    found = find_audio_files([i for i in inputs if not is_uri(i)], extensions)
    sources = [Source(os.path.abspath(p), os.path.abspath(p)) for p in found.files]
    problems = list(found.problems)
    seen = set()
    for uri in (i for i in inputs if is_uri(i)):
        for name in list_uri(uri, extensions, problems):
            if name not in seen:
                seen.add(name)
                sources.append(Source(name, None))
    return sources, problems, found.duplicates


def filesystem(uri: str):
    """(pyarrow filesystem, its path) of a URI; InputError when pyarrow cannot read that scheme."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # ArrowInvalid, ArrowNotImplementedError: no such filesystem here
        raise InputError(f"{uri}: cannot read this URI here: {' '.join(str(exc).split())}") from None


def list_uri(uri: str, extensions: frozenset[str], problems: list[str]) -> list[str]:
    """The file URIs under a URI (itself if a file), sorted; audio extensions only inside folders."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    prefix = uri.rstrip("/")[: len(uri.rstrip("/")) - len(path.rstrip("/"))] if uri.rstrip("/").endswith(
        path.rstrip("/")) else uri.split("://", 1)[0] + "://"
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            problems.append(f"{uri}: no such file or folder")
            return []
        if info.type != pafs.FileType.Directory:
            return [uri]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        problems.append(f"{uri}: cannot read: {' '.join(str(exc).split())}")
        return []
    names = []
    for item in infos:
        relative = item.path[len(path.rstrip("/")):].lstrip("/")
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if item.type == pafs.FileType.File and not hidden and os.path.splitext(item.path)[1].lower() in extensions:
            names.append(prefix + item.path)
    return sorted(names)


class fetched:
    """Context: local files for sources (a URI copied into a temporary folder, under its own extension:
    decoders look at it); the copies are removed on exit."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.folder: str | None = None

    def __enter__(self) -> list[str | None]:
        paths = []
        for k, source in enumerate(self.sources):
            if source.local is not None:
                paths.append(source.local)
                continue
            if self.folder is None:
                self.folder = tempfile.mkdtemp(prefix="zstag-fetch-")
            local = os.path.join(self.folder, f"{k}{os.path.splitext(source.name)[1][:16]}")
            try:
                fs, path = filesystem(source.name)
                with fs.open_input_stream(path) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, InputError) as exc:
                local = None
                source.fetch_error = f"{source.name}: cannot read: {' '.join(str(exc).split())}"
            paths.append(local)
        return paths

    def __exit__(self, *exc):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def uri_digest(source: Source) -> None:
    from zstag.embedcache import stream_digest

    try:
        fs, path = filesystem(source.name)
        size = fs.get_file_info(path).size
        with fs.open_input_stream(path) as handle:
            source.digest, source.size = stream_digest(handle, size), size
    except (OSError, InputError) as exc:
        source.fetch_error = f"{source.name}: cannot read: {' '.join(str(exc).split())}"
