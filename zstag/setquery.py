"""Queries over an embedding set (embedset.py): `zstag tag --embeddings DIR` and `zstag search QUERY
--embeddings DIR`, with no audio decoded and no torch (the numpy label branch: modelfile).

The set is read in record batches from memory-mapped parts (embedset.iter_batches) and scored block by
block with the very function `zstag tag` uses (scoring.scores with the model's config: the cosine, or a
calibrated model's score of its [joint | teacher] rows; each row's scores depend on that row alone), so a
block's scores are those of a whole-set pass. Memory: one block of embeddings in float64, plus what the
output needs: every row's record for table/json/jsonl/csv (as tag), the score matrix for -f parquet (one
float32 column per label), a score per row for search. The results are returned (SetResult); cli_run
writes them out and reports the rows of files that failed when embedded, one line each (exit 1), as tag does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from zstag.tagger import SCORE_DIGITS, TagUsageError

BLOCK_ROWS = 65536  # rows scored at once: 65536 x 100-d float64 = 52 MB


@dataclass
class SetResult:
    """A set query's result: records (tag's or search's) for the text formats, or the -f parquet table;
    rows: the rows scored; failures: the error lines of the rows of files that failed when embedded."""

    files: object  # modelfile.ModelFiles
    labels: list[str]
    precision: str
    rows: int
    failures: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    table: object = None  # pyarrow.Table, -f parquet


def open_set(folder: str, model: str):
    """(model files, the set's dim) after checking that the set was embedded by this model, in float32 or
    bfloat16 (both are scored alike); TagUsageError otherwise (one line)."""
    from zstag import embedset, modelfile

    try:
        files = modelfile.read_model(model)
        there = embedset.set_model(folder)
    except (modelfile.ModelError, embedset.EmbedSetError) as exc:
        raise TagUsageError(str(exc)) from None
    if there is None:
        raise TagUsageError(f"{folder}: the embedding set holds no rows yet")
    if there[0] != files.model_id:
        raise TagUsageError(f"{folder}: embedded by model {there[0]}, not by --model {model} ({files.model_id}): "
                            "give the model the set was embedded with")
    return files, there


def scored_blocks(folder: str, config: dict, label_emb: np.ndarray, columns=()):
    """Yield (the batch's rows that have an embedding: path, path_bytes and `columns`, as Arrow; their float32
    scores [n, M] (scoring.scores with the model's config); the error lines of the rows without one), block by block."""
    import pyarrow as pa

    from zstag import embedset, scoring

    for batch in embedset.iter_batches(folder, ["path", "path_bytes", "embedding", "error", *columns], BLOCK_ROWS):
        errors = batch.column("error")
        failed = errors.drop_null().to_pylist() if errors.null_count < len(errors) else []
        emb = embedset.embeddings_of(batch)
        rest = pa.Table.from_batches([batch.drop_columns(["embedding", "error"])])
        if failed:  # numpy picks the embeddings (a pyarrow filter would copy the whole batch)
            keep = np.asarray(errors.is_null().to_numpy(zero_copy_only=False), bool)
            emb, rest = emb[keep], rest.filter(pa.array(keep))
        scores = scoring.scores(config, emb, label_emb) if len(emb) else np.zeros((0, len(label_emb)), np.float32)
        yield rest, scores, failed


def _labels(files, labels, labels_file, vectors):
    from zstag import modelfile
    from zstag.tagger import parse_labels
    from zstag.words import UnknownLabelError, VectorsError, load_words

    label_list = parse_labels(labels, labels_file)
    try:
        return label_list, modelfile.label_embeddings(files, load_words(files, vectors), label_list)
    except (VectorsError, UnknownLabelError) as exc:
        raise TagUsageError(str(exc)) from None


def _check_output(output, fmt, folder, labels_file, vectors, files):
    from zstag.paths import Input, OutputError, check_output

    if fmt == "parquet" and output is None:
        raise TagUsageError("-f parquet needs --output FILE")
    if output is not None and (os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output)))):
        raise TagUsageError(f"{output}: --output must be a file in an existing folder")
    if output is None:
        return
    read = [Input("the embedding set", folder, whole=True)]
    read += [Input(what, path) for what, path in (("the labels file", labels_file), ("the word-vector file", vectors))
             if path is not None]
    read += [Input("the model file", os.path.join(files.folder, name)) for name in ("config.json", "weights.safetensors")]
    try:
        check_output(output, "--output", read)
    except OutputError as exc:
        raise TagUsageError(str(exc)) from None


def parquet_pieces(table) -> list:
    """The table as one Parquet file's bytes, as pieces for paths.atomic_write (never joined in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # No dictionary (the paths are distinct), scores uncompressed (floats gain little): ~2x faster to write.
    pq.write_table(table, sink, use_dictionary=False,
                   compression={f.name: "snappy" if pa.types.is_string(f.type) else "none" for f in table.schema})
    return [memoryview(sink.getvalue())]


def tag(folder: str, *, labels=None, labels_file=None, model="default", vectors=None, single=False, top_k=None,
        threshold=None, fmt="table", output=None) -> SetResult:
    """`zstag tag --embeddings DIR`: tag's records (tagger.file_records) from the set's rows, or -f parquet's
    table: path, path_bytes and one float32 score column per label (--single: label, confidence, score).
    fmt and output are checked here (output never over an input), written by the caller."""
    from zstag import embedset, tagger

    if fmt not in tagger.FORMATS + ("parquet",):
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(tagger.FORMATS + ('parquet',))})")
    if single and top_k is not None:
        raise TagUsageError("--top-k does not apply with --single (one label per file)")
    if fmt == "parquet" and not single and (top_k is not None or threshold is not None):
        raise TagUsageError("-f parquet writes every label's score: --top-k and --threshold do not apply")
    files, (_, precision, _) = open_set(folder, model)
    label_list, label_emb = _labels(files, labels, labels_file, vectors)
    _check_output(output, fmt, folder, labels_file, vectors, files)
    result = SetResult(files, label_list, precision, 0)
    names, blocks = [], []
    for block, scores, failed in scored_blocks(folder, files.config, label_emb):
        result.failures += failed
        result.rows += len(block)
        if fmt == "parquet":  # the set's own path columns: no Python string per row
            names.append(block)
            blocks.append(scores)
        else:
            result.records += tagger.file_records(embedset.row_names(block), scores, label_list, single=single,
                                                  top_k=top_k, threshold=threshold)
    if fmt == "parquet":
        result.table = _score_table(names, blocks, label_list, single, threshold)
    return result


def _score_table(names, blocks, label_list, single, threshold):
    import pyarrow as pa

    from zstag.tagger import softmax

    scores = np.concatenate(blocks) if blocks else np.zeros((0, len(label_list)), np.float32)
    paths = pa.concat_tables(names) if names else pa.table({"path": pa.nulls(0, pa.string()),
                                                            "path_bytes": pa.nulls(0, pa.string())})
    path, path_bytes = paths.column("path"), paths.column("path_bytes")
    if not single:
        columns = {"path": path, "path_bytes": path_bytes}
        columns.update((label, pa.array(scores[:, j])) for j, label in enumerate(label_list))
        return pa.table(columns)
    # As tagger.file_records: the argmax of the rounded scores, ties to the first label.
    rounded = np.round(scores.astype(np.float64), SCORE_DIGITS)
    best = np.argmax(rounded, axis=1)
    top = rounded[np.arange(len(best)), best]
    confidence = np.zeros(len(best))
    for start in range(0, len(best), BLOCK_ROWS):  # softmax over the labels, a block of rows at a time
        rows = slice(start, start + BLOCK_ROWS)
        confidence[rows] = softmax(rounded[rows])[np.arange(len(best[rows])), best[rows]]
    confidence = np.round(confidence, SCORE_DIGITS)
    keep = np.ones(len(best), bool) if threshold is None else top >= threshold
    label = pa.array([label_list[b] if k else None for b, k in zip(best, keep)], pa.string())
    return pa.table({"path": path, "path_bytes": path_bytes, "label": label, "confidence": confidence, "score": top})


def search(folder: str, query: str | None, *, labels=None, labels_file=None, model="default", vectors=None,
           limit=20, fmt="table", output=None) -> SetResult:
    """`zstag search QUERY --embeddings DIR`: the best `limit` rows by the mean of their scores (scoring.scores)
    with the query labels, as search.rank orders them (rounded, ties in set order): search's records, or -f
    parquet's table. fmt and output are checked here, written by the caller."""
    import pyarrow as pa

    from zstag import embedset
    from zstag import search as library_search

    if fmt not in library_search.FORMATS + ("parquet",):
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(library_search.FORMATS + ('parquet',))})")
    if limit is not None and limit < 1:
        raise TagUsageError(f"--limit {limit}: need at least 1")
    files, (_, precision, _) = open_set(folder, model)
    label_list, label_emb = _labels(files, [query] if query is not None else labels, labels_file, vectors)
    _check_output(output, fmt, folder, labels_file, vectors, files)
    result = SetResult(files, label_list, precision, 0)
    blocks, means = [], []
    for block, scores, failed in scored_blocks(folder, files.config, label_emb, ["duration_s"]):
        blocks.append(block)
        means.append(np.round(scores.astype(np.float64).mean(axis=1), SCORE_DIGITS))
        result.failures += failed
    mean = np.concatenate(means) if means else np.zeros(0)
    result.rows = len(mean)
    order = np.argsort(-mean, kind="stable")[:limit]
    # Only the chosen rows' names and durations become Python objects (a set has parts: blocks is not empty).
    chosen = pa.concat_tables(blocks).take(pa.array(order, pa.int64()))
    if fmt == "parquet":
        result.table = pa.table({
            "rank": pa.array(np.arange(1, len(order) + 1, dtype=np.int64)), "path": chosen.column("path"),
            "path_bytes": chosen.column("path_bytes"), "score": pa.array(mean[order]),
            "duration_s": chosen.column("duration_s")})
    else:
        result.records = [{"rank": n, "path": name, "score": float(mean[i]), "duration_s": duration}
                          for n, (i, name, duration) in enumerate(zip(order, embedset.row_names(chosen),
                                                                      chosen.column("duration_s").to_pylist()), 1)]
    return result
