"""`zstag search` and `zstag similar`: the tracks of a library nearest to a text query or to a track.

Both rank tracks by cosine similarity in the joint space. search: the query's label embeddings (one label
or phrase, or several: a track's score is the mean of its cosines with them); similar: a track's own
embedding ("more like this"). The library is the audio files under the PATHs given (those not in the
embedding cache are embedded first, the progress bar on stderr), or, without a PATH, every file the
embedding cache knows that is still there unchanged and has an embedding by the model: what earlier
`zstag tag` or `search` runs embedded. Output: the best --limit tracks as table, json, jsonl, csv, or an
extended M3U playlist (playlist.py).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from zstag.tagger import SCORE_DIGITS, TABLE_DIGITS, TagUsageError

FORMATS = ("table", "json", "jsonl", "csv", "m3u8")
DEFAULT_LIMIT = 20
SEARCH_NOTE = "score: cosine similarity of track and query embeddings, -1..1 (higher = closer; not a probability)"


@dataclass
class Track:
    path: str
    embedding: np.ndarray
    stats: dict | None = None


@dataclass
class Library:
    tracks: list[Track]
    failures: list[str] = field(default_factory=list)  # one line each
    cached: int = 0
    from_cache: bool = False  # no PATH given: the embedding cache's tracks


def load_library(files, found, *, first: list[str] = (), workers: int | None = None, use_cache: bool = True,
                 progress=None, device="cpu", sample_seconds: float | None = None,
                 notice=None) -> tuple[Library, list]:
    """(the library, the TrackResults of `first`): the files found (tagger.Found) under the PATHs, embedded
    where the cache misses them, or, found None, the cache's tracks (cached_library). first: files embedded
    in the same pass (similar's query track). files: modelfile.ModelFiles. sample_seconds: embeddings of
    that much audio per track (windows.py), from the cache too: never ranked beside whole-track ones.
    notice: as embeddings.embed_files."""
    from zstag.embedcache import cache_id
    from zstag.tagger import track_results

    paths = list(first) + (found.files if found is not None else [])
    results = track_results(files, paths, workers=workers, use_cache=use_cache, progress=progress, device=device,
                            sample_seconds=sample_seconds, notice=notice)
    head, rest = results[:len(first)], results[len(first):]
    if found is None:
        return cached_library(cache_id(files.model_id, sample_seconds=sample_seconds), use_cache, notice), head
    library = Library([Track(r.path, r.embedding, r.stats) for r in rest if r.ok], list(found.problems),
                      sum(r.cached for r in rest if r.ok))
    library.failures += [r.error for r in rest if not r.ok]
    return library, head


def cached_library(model_id: str, use_cache: bool = True, notice=None) -> Library:
    """Every file the embedding cache holds a whole-track embedding of by model_id, still there unchanged."""
    from zstag.embedcache import EmbeddingCache, file_stamp

    cache = EmbeddingCache.open_default(notice) if use_cache else None
    if cache is None:
        raise TagUsageError("no PATH given and no embedding cache to search: name the files or folders to search")
    try:
        rows = cache.library(model_id)
    finally:
        cache.close()
    tracks = [Track(path, emb, stats) for path, stamp, emb, stats in rows if file_stamp(path) == stamp]
    return Library(tracks, cached=len(tracks), from_cache=True)


def query_embeddings(files, words, labels: list[str]) -> np.ndarray:
    """[M, D] label embeddings of the query (modelfile.label_embeddings); TagUsageError for unknown words."""
    from zstag import modelfile
    from zstag.words import UnknownLabelError

    try:
        return modelfile.label_embeddings(files, words, labels)
    except UnknownLabelError as exc:
        raise TagUsageError(str(exc)) from None


def rank(tracks: list[Track], query: np.ndarray, limit: int | None, exclude: set | None = None,
         config: dict | None = None, similar: bool = False) -> list[dict]:
    """The best `limit` tracks for query [M, D] (the mean of each track's scores with its rows: the model's
    label scores, zstag/scoring.py, or with similar the track-to-track similarity), best first, ties in library
    order; exclude: (st_dev, st_ino) of files to leave out (the query track)."""
    from zstag import scoring

    if exclude:
        tracks = [t for t in tracks if _file_id(t.path) not in exclude]
    if not tracks:
        return []
    score = scoring.similarity if similar else scoring.scores
    scores = score(config or {}, np.stack([t.embedding for t in tracks]), np.atleast_2d(query)).astype(np.float64)
    # Rounded before sorting: the order is that of the numbers written out.
    scores = np.round(scores.mean(axis=1), SCORE_DIGITS)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [{"rank": n, "path": tracks[i].path, "score": float(scores[i]),
             "duration_s": (tracks[i].stats or {}).get("duration_s")} for n, i in enumerate(order, 1)]


def _file_id(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def render(records: list[dict], fmt: str, *, query: dict, model_id: str, output: str | None = None,
           score_note: str = SEARCH_NOTE,
           width: int | None = None) -> str:
    """The ranked tracks in one of FORMATS; query: what was searched for (json's header). output: where
    an m3u8 playlist goes (its paths are relative to that folder where it holds the tracks)."""
    if fmt == "m3u8":
        from zstag.playlist import m3u8

        return m3u8([r["path"] for r in records], [r["duration_s"] for r in records], output)
    from zstag.paths import valid_text
    from zstag.render import csv_text, portable

    if fmt == "json":
        if "similar_to" in query:
            query = {"similar_to": valid_text(query["similar_to"])}
        return json.dumps({"model": model_id, "query": query, "score": score_note,
                           "tracks": [portable(r) for r in records]}, indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(portable(r), ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        return csv_text(["rank", "path", "score", "duration_s"],
                        [[r["rank"], r["path"], r["score"], r["duration_s"]] for r in records])
    if fmt == "table":
        return _table(records, query, width, score_note)
    raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def _table(records: list[dict], query: dict, width: int | None, score_note: str = SEARCH_NOTE) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from zstag.paths import one_line

    title = f"similar to {query['similar_to']}" if "similar_to" in query else "query: " + "; ".join(query["labels"])
    title = Text(one_line(title))  # Text, not str: a "[" in a name is no rich markup
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("file", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("duration", justify="right")
    for r in records:
        seconds = r["duration_s"]
        duration = f"{int(seconds // 60)}:{int(seconds % 60):02d}" if seconds is not None else "—"
        table.add_row(str(r["rank"]), Text(one_line(r["path"])), f"{r['score']:.{TABLE_DIGITS}f}", duration)
    console = Console(file=io.StringIO(), width=width or 120, color_system=None, highlight=False)
    console.print(table)
    console.print(score_note, soft_wrap=True)
    return console.file.getvalue()


# --- the commands -------------------------------------------------------------------------------


@dataclass
class Ranked:
    """A search's result: the ranked records, what was asked (labels or similar_to), the model id, the
    library searched; error: similar's track could not be embedded (one line; no records then)."""

    records: list[dict]
    about: dict
    model_id: str
    library: Library
    error: str | None = None
    score_note: str = SEARCH_NOTE  # what the scores mean (a calibrated model's label queries: scoring.note)


def search(query: str | None, inputs: list[str], *, labels: list[str] | None = None,
           labels_file: str | None = None, similar_to: str | None = None, model: str = "default",
           vectors: str | None = None, extensions: str | None = None, limit: int | None = DEFAULT_LIMIT,
           fmt: str = "table", output: str | None = None, workers: int | None = None, use_cache: bool = True,
           progress=None, device="cpu", sample_seconds: float | None = None, notice=None) -> Ranked:
    """`zstag search` (query text, or labels / labels_file) or, with similar_to, `zstag similar`: the
    tracks ranked. fmt and output are checked here (output never over an input), written by the caller.
    TagUsageError (or DeviceError) for bad options, model, words or device, before any audio is read.
    sample_seconds: as tagger.prepare's. progress, notice: as embeddings.embed_files."""
    from zstag import modelfile, scoring
    from zstag.devices import target_of
    from zstag.tagger import Found, check_sampling, check_tag_output, find_audio_files, parse_extensions, parse_labels
    from zstag.words import VectorsError, load_words

    if fmt not in FORMATS:
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not inputs and not use_cache:
        raise TagUsageError("--no-cache needs the files or folders to search (without a PATH, zstag searches its cache)")
    if limit is not None and limit < 1:
        raise TagUsageError(f"--limit {limit}: need at least 1")
    if output is not None and (os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output)))):
        raise TagUsageError(f"{output}: --output must be a file in an existing folder")
    check_sampling(sample_seconds)
    target = target_of(device)
    try:
        files = modelfile.read_model(model)
    except modelfile.ModelError as exc:
        raise TagUsageError(str(exc)) from None
    query_emb = None
    if similar_to is None:
        label_list = parse_labels([query] if query is not None else labels, labels_file)
        try:
            query_emb = query_embeddings(files, load_words(files, vectors), label_list)
        except VectorsError as exc:
            raise TagUsageError(str(exc)) from None
        about = {"labels": label_list}
    else:
        if not os.path.isfile(similar_to):
            raise TagUsageError(f"{similar_to}: no such file")
        about = {"similar_to": similar_to}

    found = find_audio_files(inputs, parse_extensions(extensions)) if inputs else None
    if output is not None:  # never over an input: the audio, the query track, the labels, vectors or model files
        read = (found.files if found is not None else []) + ([similar_to] if similar_to is not None else [])
        check_tag_output(output, Found(read, [], 0), labels_file, vectors, files.folder)
    if found is not None and similar_to is not None:  # embedded once, as the query; never its own neighbour
        query_id = _file_id(similar_to)
        found.files = [p for p in found.files if _file_id(p) != query_id]
    library, head = load_library(files, found, first=[similar_to] if similar_to else [], workers=workers,
                                 use_cache=use_cache, progress=progress, device=target,
                                 sample_seconds=sample_seconds, notice=notice)
    if output is not None and library.from_cache:  # the cache's tracks were read too: never written over
        check_tag_output(output, Found([t.path for t in library.tracks], [], 0), labels_file, vectors, files.folder)
    exclude = None
    if similar_to is not None:
        if not head[0].ok:
            return Ranked([], about, files.model_id, library, head[0].error)
        query_emb, exclude = head[0].embedding, {_file_id(similar_to)}
    note = SEARCH_NOTE if similar_to is not None else scoring.note(files.config, SEARCH_NOTE)
    return Ranked(rank(library.tracks, query_emb, limit, exclude, files.config, similar=similar_to is not None),
                  about, files.model_id, library, score_note=note)
