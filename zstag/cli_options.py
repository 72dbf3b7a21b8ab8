"""The CLI's help texts, shared options and helpers: one-line failures (`fail`), the training commands'
corpus and split options. cli.py holds the commands themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

def fail(message: str, code: int = 1) -> None:
    """Print a one-line error on stderr and exit."""
    typer.echo(f"zstag: error: {message}", err=True)
    raise typer.Exit(code)


def _write_or_fail(path, write) -> None:
    """Run write(); an unwritable destination is a one-line error, not a traceback."""
    try:
        write()
    except OSError as exc:
        fail(f"{exc.filename or path}: cannot write: {exc.strerror or exc}")


# --- preprocess / split / train ------------------------------------------------

CORPUS_HELP = "Corpus kind: msd, mtat, gtzan, folder, csv or auto."


def _open_training_corpus(kind: str, root: Path, audio: Optional[Path], top_n: Optional[int],
                          min_tracks: Optional[int], min_val: Optional[float]):
    """open_corpus with only the reader options the user gave; one-line errors; what the reader left out
    (missing audio, malformed rows) is one line on stderr."""
    from zstag.corpora import KINDS, open_corpus

    if kind != "auto" and kind not in KINDS:
        fail(f"--corpus: unknown kind {kind!r}: expected one of {', '.join(KINDS)} or auto", 2)
    given = {"audio": audio, "top_n": top_n, "min_tracks": min_tracks, "min_val": min_val}
    options = {k: v for k, v in given.items() if v is not None}
    try:
        data = open_corpus(kind, root, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        name = str(exc).rsplit("'", 2)[-2].replace("_", "-")
        fail(f"--{name} does not apply to a {kind} corpus", 2)
    left_out = data.left_out()
    if left_out:
        typer.echo(f"zstag: {left_out}", err=True)
    return data


def _unseen_names(unseen: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in unseen.split(",") if x.strip()] if unseen else None


def _check_split_options(unseen, unseen_fraction, split_by, val_fraction, test_fraction) -> None:
    """The split options' values, before any data is read: a bad one is a usage error (exit 2)."""
    from zstag.splits import ARTIST_TEST_FRACTION, SplitError, check_fractions

    if split_by not in ("artist", "tracks"):
        fail(f"--split-by {split_by!r}: expected artist or tracks", 2)
    if test_fraction is None:
        test_fraction = ARTIST_TEST_FRACTION if split_by == "artist" else 0.0
    try:
        check_fractions(None if _unseen_names(unseen) else unseen_fraction, val_fraction, test_fraction)
    except SplitError as exc:
        fail(str(exc), 2)


def _split_for(corpus, split_file, seed, unseen, unseen_fraction, split_by, val_fraction, test_fraction):
    import warnings

    from zstag.splits import load_split, make_split

    # SplitLabelError (a usage error, exit 2): --unseen names a label the corpus does not have
    if split_file is not None:
        return load_split(split_file)
    with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's source-line format
        warnings.simplefilter("always")
        split = make_split(corpus, seed=seed, unseen=_unseen_names(unseen), unseen_fraction=unseen_fraction,
                           by_artist=split_by == "artist", validation_fraction=val_fraction,
                           test_fraction=test_fraction)
    for warning in caught:
        typer.echo(f"zstag: warning: {warning.message}", err=True)
    return split


def _cache_corpus(features: Path):
    from zstag.features import cache_corpus

    return cache_corpus(features)


# --- tag, eval, search ---------------------------------------------------------

TAG_HELP = """Score audio files against free-text labels (zero-shot).

Each file is embedded whole (the mean over all its ~3 s segments; deterministic) and compared with
each label's embedding. Scores are cosine similarities in -1..1: higher is closer; they rank labels
and files but are not probabilities. --single picks one label per file with a confidence =
softmax(cosine / 0.1) over the given labels (relative to that label set). Track embeddings are
cached by file content and model, so re-tagging with new labels decodes nothing. Per-file errors go
to stderr, one line each; exit code 1 if any file failed, 2 for usage errors.
"""

EVAL_HELP = """Evaluate a model on a labelled corpus: zero-shot figures for seen, unseen and all labels.

Single-label corpora (gtzan, folder, a csv with one label per track): accuracy of the argmax over the
label words, per-class recall, confusion matrix (--plot FILE.png draws it). Multi-label corpora (mtat,
msd, csv): retrieval ROC-AUC / PR-AUC per label and annotation ROC-AUC / AP per track (both averaged),
hit@k and P@k for k = 1, 5, 10. Seen labels are those in the model's training vocabulary; with --split
they are the split's seen labels and only the split's test partition (groups B and C, plus any held-out
group-A tracks) is evaluated. A transfer report compares the labels and the acoustic conditions with the
model's training corpus. Track embeddings are cached, so a second run decodes nothing. Files that
cannot be decoded (or are silent or too short) are reported on stderr and left out, and the exit code is 1
(the report is still written); 2 for usage errors. --out writes every figure as JSON.
"""

SEARCH_HELP = """Find the tracks closest to a text query: one label or phrase ("speech", "calm piano").

Without --labels the first argument is the query and the rest are the files and folders to search; with
--labels (several labels: a track scores the mean of its cosines with them) every argument is a path.
Files not yet embedded are embedded first (the cache is shared with `zstag tag`); without a PATH the
search covers every file the embedding cache holds for the model. --format m3u8 -o list.m3u8 writes a
playlist (paths relative to its folder where it holds the tracks).
"""


def _search_options(model, vectors, extensions, limit, fmt, output, workers, no_cache, device, no_progress) -> dict:
    from zstag.devices import Target

    return dict(model=model, vectors=vectors, extensions=extensions, limit=limit, fmt=fmt, output=output,
                workers=workers, use_cache=not no_cache, device=Target(device), progress=not no_progress)


_LIMIT = typer.Option(20, "--limit", "-n", min=1, help="How many tracks to list.")
_SEARCH_FORMAT = typer.Option("table", "--format", "-f", help="table, json, jsonl, csv or m3u8 (a playlist).")
_SEARCH_OUTPUT = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout.")
_SEARCH_MODEL = typer.Option("default", "--model", "-m", help="Model folder, or a name in models/.")
_SEARCH_EXTENSIONS = typer.Option(None, "--extensions", help="Extensions to take from folders: mp3,wav.")
_SEARCH_WORKERS = typer.Option(None, "--workers", min=0, help="Decode processes for files not yet embedded (default: all cores).")
_SEARCH_NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the embedding cache (needs PATHs).")
_SEARCH_DEVICE = typer.Option("auto", "--device", help="Where the audio model runs: auto, cpu, cuda or cuda:N.")
_SEARCH_NO_PROGRESS = typer.Option(False, "--no-progress", help="No progress bar.")
