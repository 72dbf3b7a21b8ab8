"""Embedding sets: a library's track embeddings as a Parquet dataset (`zstag embed`), read by the set queries
(setquery.py: `tag --embeddings`, `search --embeddings`) without audio or torch.

A set is a folder of part files ``part-NNNNNN-XXXXXXXX.parquet``, one row per file (SCHEMA): its path (valid
UTF-8, + ``path_bytes`` percent-encoded where the name is not UTF-8, as render.py writes it), content digest
(embedcache.content_digest, the SQLite cache's), size, duration, model id, precision, number of segments, the
embedding (fixed-size list of float32) or the error line of a file that failed. Every part holds one model
and precision (also in its schema metadata, so a query checks them from the footers alone); a set holds one.

Each part is written whole to a temporary name (".part-…tmp", never read) and renamed (paths.atomic_write):
a killed run leaves only complete parts. A rerun skips each file whose (path, digest) has a row, copies
the row of a digest already there under another path (a copy or a moved file: nothing decoded), and embeds
the rest; so a rerun after a kill redoes only what no part holds, and adds no duplicate row. A file whose
content changed gets a new row, and the parts holding its old one are rewritten without it (drop_rows).

The engine decides only where files are embedded: "local" (tagger.track_results: the decoders, the model
and the SQLite cache of `zstag tag`) or "ray" (rayengine.py: actors running embeddings.embed_files). Both
give the rows of embed_rows, from the same code. A file is a row once its digest is known: gone and
unreadable files (no digest) are reported, not written, and tried again by the next run.

Inputs (setinputs.py): local files and folders, --from-list files of paths, and URIs read through pyarrow.fs;
a URI is read twice: hashed by the planning driver, fetched again by whoever embeds it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zstag.errors import UsageError, ZstagError
from zstag.setinputs import InputError, Source, fetched, gather, read_list, uri_digest

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
PART_FILES = 256  # rows per part file: what a kill can lose at most (the local engine's chunk of files)
FORMAT = "zstag-embeddings/1"  # in each part's schema metadata


class EmbedSetError(ZstagError):
    """An embedding set that cannot be read or written (one line naming the folder and the cause)."""


class EmbedUsageError(EmbedSetError, UsageError):
    """Bad options or a set of another model: nothing written (exit 2)."""


@dataclass
class Plan:
    todo: list[Source] = field(default_factory=list)  # to embed
    copies: list[tuple[Source, Source]] = field(default_factory=list)  # (new path, a row's source with its digest)
    skipped: int = 0  # (path, digest) already has a row
    stale: set = field(default_factory=set)  # (path, digest) rows of files whose content has changed since
    problems: list[str] = field(default_factory=list)  # one line each: no row, tried again next run


@dataclass
class Embedded:
    """What `zstag embed` did (run): files embedded, error rows written, rows already there, rows copied,
    inputs not read (their lines), changed files' rows replaced, duplicate paths skipped."""

    embedded: int
    failed: int
    skipped: int
    copied: int
    problems: list[str]
    replaced: int
    duplicates: int


# --- the schema -----------------------------------------------------------------------------------


def schema(dim: int, model_id: str, precision: str):
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("path_bytes", pa.string()), ("digest", pa.string()), ("size", pa.int64()),
        ("duration_s", pa.float64()), ("model_id", pa.string()), ("precision", pa.string()),
        ("n_segments", pa.int32()), ("embedding", pa.list_(pa.float32(), dim)), ("error", pa.string()),
    ], metadata={"format": FORMAT, "model_id": model_id, "precision": precision, "dim": str(dim)})


def model_dim(files) -> int:
    """The width of the model's track embeddings, the width of every row (no torch): the label branch's joint
    space, then a calibrated model's teacher words (scoring.py: its tracks are [joint D | teacher K])."""
    from zstag import scoring

    joint = int(files.embed_label_vectors(np.zeros((1, int(files.config["word_dim"])), np.float32)).shape[1])
    return joint + (len(files.config["scores"]["teacher_words"]) if scoring.is_calibrated(files.config) else 0)


def row(source: Source, embedding, error: str | None, stats: dict | None) -> dict:
    from zstag.paths import name_bytes, valid_text

    stats = stats or {}
    return {"path": valid_text(source.name), "path_bytes": name_bytes(source.name), "digest": source.digest,
            "size": source.size, "duration_s": stats.get("duration_s"), "n_segments": stats.get("segments"),
            "embedding": None if embedding is None else np.asarray(embedding, np.float32), "error": error}


def rows_table(rows: list[dict], dim: int, model_id: str, precision: str):
    import pyarrow as pa

    sch = schema(dim, model_id, precision)
    flat = np.zeros((len(rows), dim), np.float32)
    valid = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        if r["embedding"] is not None:
            flat[i], valid[i] = r["embedding"], True
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(~valid))
    columns = {name: pa.array([r[name] for r in rows], sch.field(name).type)
               for name in ("path", "path_bytes", "digest", "size", "duration_s", "n_segments", "error")}
    columns.update(model_id=pa.array([model_id] * len(rows), pa.string()),
                   precision=pa.array([precision] * len(rows), pa.string()), embedding=embedding)
    return pa.table([columns[f.name] for f in sch], schema=sch)


# --- reading a set ---------------------------------------------------------------------------------


def parts(folder: str | os.PathLike) -> list[Path]:
    """The set's complete part files, in the order they were written (temporary files are dot-names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EmbedSetError(f"{folder}: no such embedding set (a folder written by `zstag embed`)")
    return sorted(p for p in folder.iterdir() if p.name.startswith(PART_PREFIX) and p.name.endswith(PART_SUFFIX))


def set_model(folder) -> tuple[str, str, int] | None:
    """(model id, precision, dim) of the set's parts (their footers only); None for a set without parts.
    EmbedSetError for a damaged part or parts of different models."""
    import pyarrow.parquet as pq

    found = set()
    for part in parts(folder):
        try:
            meta = pq.read_schema(part).metadata or {}
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...: any unreadable part
            raise _damaged(part, exc) from None
        if meta.get(b"format") != FORMAT.encode():
            raise EmbedSetError(f"{part}: not a part of a zstag embedding set ({FORMAT})")
        found.add((meta[b"model_id"].decode(), meta[b"precision"].decode(), int(meta[b"dim"])))
    if len(found) > 1:
        raise EmbedSetError(f"{folder}: parts of several models {sorted(found)}")
    return found.pop() if found else None


def iter_batches(folder, columns: list[str], batch_rows: int = 65536):
    """The set's rows as pyarrow RecordBatches of these columns, part after part (memory-mapped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in parts(folder):
        try:  # damaged bytes: OSError (a checksum, a page header) or ArrowInvalid (a ValueError: values)
            yield from pq.ParquetFile(part, memory_map=True, page_checksum_verification=True).iter_batches(
                batch_size=batch_rows, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise _damaged(part, exc) from None


def _damaged(part: Path, exc: BaseException) -> EmbedSetError:
    return EmbedSetError(f"{part}: unreadable part file: {' '.join(str(exc).split())} (move it away and run "
                         "`zstag embed` again: its files are embedded anew)")


def row_names(batch) -> list[str]:
    """The file names of a batch's rows, exactly (path_bytes where the name is not UTF-8)."""
    from zstag.paths import name_from_bytes

    return [text if raw is None else name_from_bytes(raw)
            for text, raw in zip(batch.column("path").to_pylist(), batch.column("path_bytes").to_pylist())]


def embeddings_of(batch) -> np.ndarray:
    """float32 [rows, dim] of a batch's embedding column, zero-copy where it can be; a row without an
    embedding (an error row) gives what its slot holds (zeros as written here): callers go by the error column."""
    column = batch.column("embedding")
    if hasattr(column, "combine_chunks"):  # a Table's ChunkedArray
        column = column.combine_chunks()
    dim = column.type.list_size
    values = column.values.slice(column.offset * dim, len(column) * dim)
    return values.to_numpy(zero_copy_only=False).reshape(-1, dim)


# --- embedding ---------------------------------------------------------------------------------------


def embed_rows(sources: list[Source], embed_paths) -> list[dict]:
    """The rows of sources (digests known), each file embedded by embed_paths(local paths) -> TrackResults
    (tagger.track_results or embeddings.embed_files): the one step both engines run."""
    with fetched(sources) as locals_:
        ready = [(s, p) for s, p in zip(sources, locals_) if p is not None]
        results = embed_paths([p for _, p in ready]) if ready else []
    rows, by_source = [], {id(s): r for (s, _), r in zip(ready, results)}
    for source in sources:
        result = by_source.get(id(source))
        if result is None:
            rows.append(row(source, None, source.fetch_error or f"{source.name}: cannot read", None))
        elif result.ok:
            rows.append(row(source, result.embedding, None, result.stats))
        else:  # the line names the file as the decoder saw it: a fetched copy is named by its URI
            line = result.error
            local = result.path
            rows.append(row(source, None, source.name + line[len(local):] if line.startswith(local) else line, None))
    return rows


# --- planning --------------------------------------------------------------------------------------


def plan(folder, sources: list[Source], *, workers: int | None = None, use_cache: bool = True, notice=None) -> Plan:
    """Digest each source (local files: embedcache.file_digests, remembered in the SQLite cache; URIs:
    read through pyarrow.fs) and sort them against the set's rows: skipped, copied or to embed."""
    from zstag.embedcache import file_digests

    result = Plan()
    local = [s for s in sources if s.local is not None]
    digests = file_digests([s.local for s in local], workers=workers, use_cache=use_cache, notice=notice)
    for source, digest in zip(local, digests):
        source.digest = digest
        if digest is not None:
            try:
                source.size = os.stat(source.local).st_size
            except OSError:
                source.digest = None
    for source in (s for s in sources if s.local is None):
        uri_digest(source)
    have, by_digest, by_name = set(), {}, {}
    if Path(folder).is_dir() and parts(folder):
        for batch in iter_batches(folder, ["path", "path_bytes", "digest"]):
            for name, digest in zip(row_names(batch), batch.column("digest").to_pylist()):
                have.add((name, digest))
                by_digest.setdefault(digest, name)
                by_name.setdefault(name, set()).add(digest)
    for source in sources:
        if source.digest is None:
            result.problems.append(source.fetch_error or f"{source.name}: cannot read the file")
            continue
        result.stale |= {(source.name, d) for d in by_name.get(source.name, ()) if d != source.digest}
        if (source.name, source.digest) in have:
            result.skipped += 1
        elif source.digest in by_digest:
            result.copies.append((source, Source(by_digest[source.digest], None, source.digest, source.size)))
        else:
            result.todo.append(source)
    return result


def copied_rows(folder, copies: list[tuple[Source, Source]]) -> list[dict]:
    """Rows for files whose content the set holds under another path: that row, with the new path."""
    if not copies:
        return []
    wanted = {old.digest for _, old in copies}
    found = {}
    for batch in iter_batches(folder, ["digest", "duration_s", "n_segments", "embedding", "error"]):
        digests = batch.column("digest").to_pylist()
        hits = [i for i, d in enumerate(digests) if d in wanted and d not in found]
        if hits:
            emb = embeddings_of(batch)
            for i in hits:
                found[digests[i]] = (emb[i].copy(), batch.column("error")[i].as_py(),
                                     batch.column("duration_s")[i].as_py(), batch.column("n_segments")[i].as_py())
    rows = []
    for new, old in copies:
        emb, error, duration, n_segments = found[old.digest]
        if error is not None:  # the line named the old path
            error = new.name + error[len(old.name):] if error.startswith(old.name) else error
        rows.append(row(new, None if error is not None else emb, error,
                        {"duration_s": duration, "segments": n_segments}))
    return rows


# --- writing ----------------------------------------------------------------------------------------


def write_part(table, sink) -> None:
    """A part's Parquet bytes: the embeddings uncompressed and without a dictionary (float vectors gain
    nothing from either, and queries read them faster), the rest snappy; every page with its CRC32, which
    the readers check (iter_batches, drop_rows)."""
    import pyarrow.parquet as pq

    pq.write_table(table, sink, compression={f.name: "none" if f.name == "embedding" else "snappy" for f in table.schema},
                   use_dictionary=[f.name for f in table.schema if f.name != "embedding"],
                   write_page_checksum=True)  # damaged bytes are an error when read, never other numbers


class PartWriter:
    """Writes rows as new part files of a set, each whole or not at all (paths.atomic_write), numbered
    after the parts already there."""

    def __init__(self, folder, dim: int, model_id: str, precision: str):
        self.folder, self.dim, self.model_id, self.precision = Path(folder), dim, model_id, precision
        existing = parts(folder) if self.folder.is_dir() else []
        self.next = 1 + max((int(p.name[len(PART_PREFIX):].split("-")[0]) for p in existing), default=0)
        self.rows = 0

    def write(self, rows: list[dict]) -> Path | None:
        import pyarrow as pa

        from zstag.paths import atomic_write

        if not rows:
            return None
        sink = pa.BufferOutputStream()
        write_part(rows_table(rows, self.dim, self.model_id, self.precision), sink)
        path = self.folder / f"{PART_PREFIX}{self.next:06d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        atomic_write(path, [memoryview(sink.getvalue())])
        self.next += 1
        self.rows += len(rows)
        return path


def drop_rows(folder, stale: set) -> None:
    """Rewrite the parts holding (path, digest) rows in stale without them, each atomically: run after the
    files' new rows are written, so a kill in between leaves the old row beside the new one (the next run
    drops it), never neither."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zstag.paths import atomic_write

    if not stale:
        return
    for part in parts(folder):
        try:
            table = pq.read_table(part, page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            raise _damaged(part, exc) from None
        keep = [(name, digest) not in stale for name, digest in zip(row_names(table), table.column("digest").to_pylist())]
        if all(keep):
            continue
        sink = pa.BufferOutputStream()
        write_part(table.filter(pa.array(keep)), sink)
        atomic_write(part, [memoryview(sink.getvalue())])


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the command --------------------------------------------------------------------------------------


def run(inputs: list[str], out: str, *, lists: list[str] = (), model: str = "default", extensions: str | None = None,
        engine: str = "local", part_files: int = PART_FILES, workers: int | None = None, use_cache: bool = True,
        device="auto", progress=None, ray_options: dict | None = None, note=None, notice=None) -> Embedded:
    """`zstag embed`: embed the inputs into the set `out` (created or resumed). device: a devices.Target (its
    bf16: the set's precision). progress: the local engine's callback (embeddings.embed_files); with --engine
    ray, any progress shows Ray Data's bars. note(line): each input not read and each error row, as they come
    (a run over millions of files keeps no list of them). notice: as embeddings.embed_files. EmbedUsageError (exit 2) before anything is written:
    bad options, a model that cannot be used, an --out that holds an input or a set of another model."""
    from zstag import modelfile
    from zstag.devices import target_of
    from zstag.paths import Input, OutputIsInputError, check_output
    from zstag.tagger import TagUsageError, parse_extensions

    target = target_of(device)
    note = note or (lambda line: None)
    if engine not in ("local", "ray"):
        raise EmbedUsageError(f"--engine {engine!r}: choose local or ray")
    if engine != "ray" and ray_options:
        raise EmbedUsageError("--ray-address, --gpus-per-worker go with --engine ray")
    try:
        items = list(inputs) + [path for listed in lists for path in read_list(listed)]
        files = modelfile.read_model(model)
        extension_set = parse_extensions(extensions)
    except (InputError, modelfile.ModelError, TagUsageError) as exc:
        raise EmbedUsageError(str(exc)) from None
    if not items:
        raise EmbedUsageError("no inputs: give PATHs or --from-list FILE")
    precision = "bfloat16" if target.bf16 else "float32"
    if os.path.lexists(out) and not Path(out).is_dir():
        raise EmbedUsageError(f"{out}: --out is no folder; an embedding set is a folder of part files (give a new name)")
    there = set_model(out) if Path(out).is_dir() else None
    if there is not None and there[:2] != (files.model_id, precision):
        raise EmbedUsageError(f"{out}: holds embeddings of model {there[0]} ({there[1]}), not {files.model_id} "
                              f"({precision}): one model per set, give another --out")
    try:
        sources, problems, duplicates = gather(items, extension_set)
    except InputError as exc:
        raise EmbedUsageError(str(exc)) from None
    read = [Input("the input file", s.local) for s in sources] + [Input("the list file", f) for f in lists if f != "-"]
    read += [Input("the model file", Path(files.folder) / name) for name in (modelfile.CONFIG_FILE, modelfile.WEIGHTS_FILE)]
    try:
        check_output(out, "--out", read, folder=True)
    except OutputIsInputError as exc:
        raise EmbedUsageError(str(exc)) from None
    if engine == "ray":
        from zstag.rayengine import ray_batches  # ImportError here: EmbedUsageError, before any work

        batches = ray_batches(files, part_files, bf16=target.bf16, progress=progress is not None, **(ray_options or {}))
    else:
        batches = local_batches(files, part_files, workers=workers, use_cache=use_cache, device=target,
                                progress=progress, notice=notice)
    Path(out).mkdir(parents=True, exist_ok=True)
    todo = plan(out, sources, workers=workers, use_cache=use_cache, notice=notice)
    problems += todo.problems
    for line in problems:
        note(line)
    writer = PartWriter(out, model_dim(files), files.model_id, precision)
    for rows in chunks(copied_rows(out, todo.copies), part_files):
        writer.write(rows)
    failed = 0
    for rows in batches(todo.todo):
        writer.write(rows)
        for r in rows:
            if r["error"] is not None:
                failed += 1
                note(r["error"])
    drop_rows(out, todo.stale)
    return Embedded(len(todo.todo) - failed, failed, todo.skipped, len(todo.copies), problems, len(todo.stale),
                    duplicates)


def local_batches(files, part_files: int, *, workers, use_cache, device, progress, notice=None):
    """batches(sources) -> the rows of each part_files sources in turn, embedded by tagger.track_results."""
    from zstag.tagger import track_results

    def embed_paths(paths):
        return track_results(files, paths, workers=workers, use_cache=use_cache, progress=progress, device=device,
                             notice=notice)

    def batches(sources):
        for chunk in chunks(sources, part_files):
            yield embed_rows(chunk, embed_paths)

    return batches
