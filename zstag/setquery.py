"""Queries over an embedding set (embedset.py): `zstag tag --embeddings DIR` and `zstag search QUERY
--embeddings DIR`, with no audio decoded and no torch (the numpy label branch: modelfile).

The set is read in record batches from memory-mapped parts (embedset.iter_batches) and scored block by
block with the very function `zstag tag` uses (modelfile.cosine_scores: each row's cosines depend on that
row alone), so a block's scores are those of a whole-set pass. Memory: one block of embeddings in float64,
plus what the output needs: every row's record for table/json/jsonl/csv (as tag), the score matrix for
-f parquet (one float32 column per label, written in one atomic file), a score per row for search.
Rows of files that failed when embedded are reported on stderr, one line each (exit 1), as tag reports them.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from zstag.tagger import SCORE_DIGITS, TagUsageError

BLOCK_ROWS = 65536  # rows scored at once: 65536 x 100-d float64 = 52 MB


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


def scored_blocks(folder: str, label_emb: np.ndarray, columns=()):
    """Yield (the batch's rows that have an embedding: path, path_bytes and `columns`, as Arrow; their float32
    scores [n, M]; the error lines of the rows without one), block by block."""
    import pyarrow as pa

    from zstag import embedset
    from zstag.modelfile import cosine_scores

    for batch in embedset.iter_batches(folder, ["path", "path_bytes", "embedding", "error", *columns], BLOCK_ROWS):
        errors = batch.column("error")
        failed = errors.drop_null().to_pylist() if errors.null_count < len(errors) else []
        emb = embedset.embeddings_of(batch)
        rest = pa.Table.from_batches([batch.drop_columns(["embedding", "error"])])
        if failed:  # numpy picks the embeddings (a pyarrow filter would copy the whole batch)
            keep = np.asarray(errors.is_null().to_numpy(zero_copy_only=False), bool)
            emb, rest = emb[keep], rest.filter(pa.array(keep))
        scores = cosine_scores(emb, label_emb) if len(emb) else np.zeros((0, len(label_emb)), np.float32)
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
    from zstag.paths import Input, OutputIsInputError, check_output

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
    except OutputIsInputError as exc:
        raise TagUsageError(str(exc)) from None


def write_parquet(output: str, table) -> bool:
    """The table as one Parquet file, atomically (paths.atomic_write); False, with one line, if it cannot be."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zstag.paths import atomic_write

    sink = pa.BufferOutputStream()
    # No dictionary (the paths are distinct), scores uncompressed (floats gain little): ~2x faster to write.
    pq.write_table(table, sink, use_dictionary=False,
                   compression={f.name: "snappy" if pa.types.is_string(f.type) else "none" for f in table.schema})
    try:
        atomic_write(output, [memoryview(sink.getvalue())], follow_links=True)
    except OSError as exc:
        print(f"zstag: error: {output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def tag(folder: str, *, labels=None, labels_file=None, model="default", vectors=None, single=False, top_k=None,
        threshold=None, fmt="table", output=None) -> int:
    """`zstag tag --embeddings DIR`: tag's records and formats (tagger.file_records, tagger.render) from the set's
    rows, or -f parquet: path, path_bytes and one float32 score column per label (--single: label, confidence,
    score). Returns the exit code (1 when the set has rows of failed files)."""
    from zstag import embedset, tagger
    from zstag.render import terminal_width, write_output

    if fmt not in tagger.FORMATS + ("parquet",):
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(tagger.FORMATS + ('parquet',))})")
    if single and top_k is not None:
        raise TagUsageError("--top-k does not apply with --single (one label per file)")
    if fmt == "parquet" and not single and (top_k is not None or threshold is not None):
        raise TagUsageError("-f parquet writes every label's score: --top-k and --threshold do not apply")
    files, (_, precision, _) = open_set(folder, model)
    label_list, label_emb = _labels(files, labels, labels_file, vectors)
    _check_output(output, fmt, folder, labels_file, vectors, files)
    names, blocks, failures = [], [], []
    records = []
    for block, scores, failed in scored_blocks(folder, label_emb):
        failures += failed
        if fmt == "parquet":  # the set's own path columns: no Python string per row
            names.append(block)
            blocks.append(scores)
        else:
            records += tagger.file_records(embedset.row_names(block), scores, label_list, single=single, top_k=top_k,
                                           threshold=threshold)
    for line in failures:
        print(f"zstag: {line}", file=sys.stderr)
    tagged = sum(len(b) for b in blocks) if fmt == "parquet" else len(records)
    if fmt == "parquet":
        ok = write_parquet(output, _score_table(names, blocks, label_list, single, threshold))
    else:
        terminal = output is None and sys.stdout is not None and sys.stdout.isatty()
        ok = write_output(tagger.render(records, fmt, single=single, labels=label_list, model_id=files.model_id,
                                        bf16=precision == "bfloat16", width=terminal_width() if terminal else None),
                          output)
    if not ok:
        return 1
    print(f"zstag: tagged {tagged} of {tagged + len(failures)} files (from the embedding set {folder})"
          + (f"; {len(failures)} failed when embedded" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


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
           limit=20, fmt="table", output=None) -> int:
    """`zstag search QUERY --embeddings DIR`: the best `limit` rows by the mean of their cosines with the query
    labels, as search.rank orders them (rounded, ties in set order); search's formats, or -f parquet."""
    import pyarrow as pa

    from zstag import embedset
    from zstag import search as library_search
    from zstag.render import terminal_width, write_output

    if fmt not in library_search.FORMATS + ("parquet",):
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(library_search.FORMATS + ('parquet',))})")
    if limit is not None and limit < 1:
        raise TagUsageError(f"--limit {limit}: need at least 1")
    files, _ = open_set(folder, model)
    label_list, label_emb = _labels(files, [query] if query is not None else labels, labels_file, vectors)
    _check_output(output, fmt, folder, labels_file, vectors, files)
    blocks, means, failures = [], [], []
    for block, scores, failed in scored_blocks(folder, label_emb, ["duration_s"]):
        blocks.append(block)
        means.append(np.round(scores.astype(np.float64).mean(axis=1), SCORE_DIGITS))
        failures += failed
    for line in failures:
        print(f"zstag: {line}", file=sys.stderr)
    mean = np.concatenate(means) if means else np.zeros(0)
    order = np.argsort(-mean, kind="stable")[:limit]
    # Only the chosen rows' names and durations become Python objects (a set has parts: blocks is not empty).
    chosen = pa.concat_tables(blocks).take(pa.array(order, pa.int64()))
    records = [{"rank": n, "path": name, "score": float(mean[i]), "duration_s": duration}
               for n, (i, name, duration) in enumerate(zip(order, embedset.row_names(chosen),
                                                           chosen.column("duration_s").to_pylist()), 1)]
    if fmt == "parquet":
        ok = write_parquet(output, pa.table({
            "rank": pa.array(np.arange(1, len(order) + 1, dtype=np.int64)), "path": chosen.column("path"),
            "path_bytes": chosen.column("path_bytes"), "score": pa.array(mean[order]),
            "duration_s": chosen.column("duration_s")}))
    else:
        terminal = output is None and sys.stdout is not None and sys.stdout.isatty()
        ok = write_output(library_search.render(records, fmt, query={"labels": label_list}, model_id=files.model_id,
                                                output=output, width=terminal_width() if terminal else None), output)
    if not ok:
        return 1
    print(f"zstag: searched {len(mean)} tracks (from the embedding set {folder})"
          + (f"; {len(failures)} failed when embedded" if failures else ""), file=sys.stderr)
    if not len(mean):
        print("zstag: no tracks to search", file=sys.stderr)
        return 1
    return 1 if failures else 0
