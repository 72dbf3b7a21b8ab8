"""The `zstag` command line: thin wrappers that parse options and call the modules; the library's
ZstagError / UsageError become one line on stderr and exit 1 / 2 (errors.py). Help texts and shared
options: cli_options.py; what tag, search, similar and eval show: cli_run.py.

Heavy imports (torch, librosa, gensim) happen inside the commands, never at module level,
so `zstag --help` and `zstag labels` start fast.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from zstag.cli_options import (_LIMIT, _SAMPLE_SECONDS, _SEARCH_DEVICE, _SEARCH_EXTENSIONS, _SEARCH_FORMAT,
                               _SEARCH_MODEL, _SEARCH_NO_CACHE, _SEARCH_NO_PROGRESS, _SEARCH_OUTPUT, _SEARCH_WORKERS,
                               CORPUS_HELP,
                               EVAL_HELP, SEARCH_HELP, TAG_HELP, _cache_corpus, _check_split_options,
                               _open_training_corpus, _search_options, _split_for, _write_or_fail, fail)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Zero-shot music classification and tagging (Choi et al., ISMIR 2019).",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from zstag import __version__

        typer.echo(f"zstag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Show the version."),
) -> None:
    """Zero-shot music classification and tagging (Choi et al., ISMIR 2019)."""


# Set by the commands that leave nothing for the interpreter's teardown to finish (every file they write
# is closed, the decoders and threads stopped): after one of them has imported torch, main() exits without
# tearing down torch's modules, a sizeable part of a short run such as a cold `zstag tag`.
_quick_exit = False


def _exit_codes(function):
    """The command with zstag's errors as one line on stderr: exit 2 for a UsageError, 1 for any other
    ZstagError (errors.py); a message or code that depends on where the error comes from is set there."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        from zstag.errors import UsageError, ZstagError

        try:
            return function(*args, **kwargs)
        except UsageError as exc:
            fail(str(exc), 2)
        except ZstagError as exc:
            fail(str(exc))

    return run


def command(name: Optional[str] = None, **options):
    """app.command, with _exit_codes."""

    def register(function):
        app.command(name, **options)(_exit_codes(function))
        return function

    return register


# --- labels (words.py) -------------------------------------------------------


@command()
def labels(
    names: List[str] = typer.Argument(..., metavar="LABEL...", help="Labels to look up, e.g. jazz \"drum and bass\"."),
    vectors: Optional[Path] = typer.Option(
        None, "--vectors", help="Word vectors: GloVe text, word2vec text/binary or gensim .kv (default: GloVe 6B 50-d)."),
    nearest: int = typer.Option(5, "--nearest", "-k", min=0, help="How many nearest vocabulary words to show."),
    model: str = typer.Option("default", "--model", "-m", help="Whose scoring to show: model name or folder."),
) -> None:
    """Show how labels map to word vectors (normalised form, words used, nearest words) and how the model scores them."""
    from zstag.cli_run import show_labels

    show_labels(names, vectors, nearest, model)


# --- preprocess / train (features.py, train.py) ------------------------------

@command("preprocess")
def preprocess_command(
    corpus: str = typer.Option("auto", "--corpus", help=CORPUS_HELP),
    root: Path = typer.Option(..., "--root", help="The corpus root (folder or manifest/tag file)."),
    out: Path = typer.Option(..., "--out", help="Feature-cache folder to create or resume."),
    workers: int = typer.Option(1, "--workers", min=1, help="Decode processes."),
    shard: str = typer.Option("1/1", "--shard", help="K/N: do only part K of N (one per machine)."),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Tracks per shard file."),
    front_end: str = typer.Option("paper", "--front-end", help="Feature front end: paper or musicnn."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Reader option: the audio folder (msd, mtat)."),
    top_n: Optional[int] = typer.Option(None, "--top-n", help="Reader option: keep the N most frequent labels."),
    min_tracks: Optional[int] = typer.Option(None, "--min-tracks", help="Reader option: drop rarer labels."),
    min_val: Optional[float] = typer.Option(None, "--min-val", help="Reader option (msd): minimum Last.fm tag weight."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Decode a corpus into log-mel features for training (resumable; bad files are listed, not fatal)."""
    from zstag.audio import FRONT_ENDS
    from zstag.corpora import corpus_inputs
    from zstag.features import parse_shard, preprocess
    from zstag.paths import check_output
    from zstag.progress import Bar

    if front_end not in FRONT_ENDS:
        fail(f"--front-end {front_end!r}: expected one of {', '.join(FRONT_ENDS)}", 2)
    try:
        part = parse_shard(shard)
    except ValueError as exc:
        fail(str(exc), 2)
    data = _open_training_corpus(corpus, root, audio, top_n, min_tracks, min_val)
    check_output(out, "--out", corpus_inputs(data), folder=True)
    from zstag.paths import put_name, valid_text

    # cache.json in valid Unicode: the name is shown (and names splits and models), the root kept whole
    source = {"name": valid_text(data.name), "kind": data.kind, **put_name({}, "root", str(root)),
              "options": data.options}
    try:
        with Bar("preprocess", not no_progress) as bar:
            report = preprocess(data.tracks, out, FRONT_ENDS[front_end], workers=workers, shard=part,
                                shard_size=shard_size, source=source, progress=bar)
    except OSError as exc:
        fail(f"{exc.filename or out}: cannot write: {exc.strerror or exc}")
    failed = len(report.failures)  # tracks_done counts every track this run tried, failed ones too
    typer.echo(
        f"{report.tracks_done - failed} tracks decoded, {failed} failed, in {report.shards_done} shards; "
        f"{report.shards_skipped} shards already done"
        + (f", {report.tracks_resumed} tracks kept from unfinished ones" if report.tracks_resumed else "")
        + f" ({report.seconds:.1f} s); "
        + ("cache complete" if report.complete else "other parts still missing")
    )
    for failure in report.failures[:10]:
        typer.echo(f"  failed: {failure['error']}", err=True)
    if report.failures:
        typer.echo(f"  all failures: {out / 'failures.csv'}", err=True)


@command("split")
def split_command(
    out: Path = typer.Option(..., "--out", help="Split JSON file to write."),
    features: Optional[Path] = typer.Option(None, "--features", help="Take the tracks from this feature cache ..."),
    corpus: str = typer.Option("auto", "--corpus", help=CORPUS_HELP),
    root: Optional[Path] = typer.Option(None, "--root", help="... or read this corpus."),
    seed: int = typer.Option(0, "--seed"),
    unseen: Optional[str] = typer.Option(None, "--unseen", help="Comma-separated unseen labels (default: random 20%)."),
    unseen_fraction: float = typer.Option(0.2, "--unseen-fraction"),
    split_by: str = typer.Option("tracks", "--split-by", help="artist or tracks."),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Seen-label test share (artist split: 0.1)."),
) -> None:
    """Make the paper's seen/unseen label split and train/validation/test partitions; save it as JSON."""
    from zstag.corpora import corpus_inputs
    from zstag.paths import Input, check_output
    from zstag.splits import save_split

    if (features is None) == (root is None):
        fail("give either --features or --root", 2)
    _check_split_options(unseen, unseen_fraction, split_by, val_fraction, test_fraction)
    if features is not None:
        data = _cache_corpus(features)
        inputs = [Input("the feature cache", features, whole=True)]
    else:
        data = _open_training_corpus(corpus, root, None, None, None, None)
        inputs = corpus_inputs(data)
    check_output(out, "--out", inputs)
    split = _split_for(data, None, seed, unseen, unseen_fraction, split_by, val_fraction, test_fraction)
    _write_or_fail(out, lambda: save_split(split, out))
    counts = split.counts()
    typer.echo(f"{out}: {counts['seen']} seen / {counts['unseen']} unseen labels; train {counts['train']}, "
               f"validation {counts['validation']}, test {counts['test']} tracks; sha256 {split.sha256[:16]}")


@command("train")
def train_command(
    features: Path = typer.Option(..., "--features", help="Feature cache from `zstag preprocess`."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (checkpoints go inside)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file (default: make one, saved in --out)."),
    unseen: Optional[str] = typer.Option(None, "--unseen", help="Without --split: comma-separated unseen labels."),
    unseen_fraction: float = typer.Option(0.2, "--unseen-fraction", help="Without --split: random unseen share."),
    split_by: str = typer.Option("tracks", "--split-by", help="Without --split: artist or tracks."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Without --split: validation share."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Without --split: seen-label test share."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, the initial weights and the sampling."),
    epochs: int = typer.Option(200, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(0.001, "--lr"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov momentum 0.9) or adam."),
    negatives: int = typer.Option(1, "--negatives", min=1, help="Negative labels per sample."),
    epoch_size: Optional[int] = typer.Option(None, "--epoch-size", min=1, help="Samples per epoch (default: one per track)."),
    early_stop: int = typer.Option(20, "--early-stop", min=1, help="Stop after this many epochs without improvement."),
    lr_patience: int = typer.Option(5, "--lr-patience", min=0, help="Epochs without improvement before lr × 0.2."),
    val_samples: int = typer.Option(1024, "--val-samples", min=1, help="Fixed validation crops per epoch (≥ 1 per track)."),
    vectors: Optional[str] = typer.Option(None, "--vectors", help="Word vectors file, or random[:DIM[:SEED]] (baseline)."),
    batch_norm: bool = typer.Option(False, "--batch-norm", help="Batch normalisation in the CNN (not in the paper)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when torch sees one)."),
    loader_workers: int = typer.Option(0, "--loader-workers", min=0, help="DataLoader processes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    no_progress: bool = typer.Option(False, "--no-progress", help="One line per epoch instead of a progress bar."),
) -> None:
    """Train the paper's model (CNN1D audio branch, linear label branch) on a feature cache.

    Several GPUs or machines: torchrun --nproc-per-node N -m zstag train ... (the batch is split between them).
    """
    from zstag.cli_run import run_train

    run_train(features=features, out=out, split=split, unseen=unseen, unseen_fraction=unseen_fraction,
              split_by=split_by, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, epochs=epochs,
              batch_size=batch_size, lr=lr, optimizer=optimizer, negatives=negatives, epoch_size=epoch_size,
              early_stop=early_stop, lr_patience=lr_patience, val_samples=val_samples, vectors=vectors,
              batch_norm=batch_norm, device=device, loader_workers=loader_workers, threads=threads, resume=resume,
              no_progress=no_progress)

# --- tag (tagger.py) ---------------------------------------------------------

@command("tag", help=TAG_HELP)
def tag_command(
    paths: Optional[List[str]] = typer.Argument(None, metavar="PATH", help="Audio files and/or folders (searched recursively)."),
    labels: Optional[List[str]] = typer.Option(
        None, "--labels", "-l", help='Comma-separated labels, e.g. rock,jazz,"drum and bass" (repeatable).'
    ),
    embeddings: Optional[str] = typer.Option(
        None, "--embeddings", help="Score the rows of this embedding set (`zstag embed`) instead of PATHs: no audio, no torch."),
    labels_file: Optional[str] = typer.Option(None, "--labels-file", help="File with one label per line (# comments)."),
    model: str = typer.Option("default", "--model", "-m", help="Model folder, or a name in models/."),
    vectors: Optional[str] = typer.Option(None, "--vectors", help="Word-vector file (default: the model's)."),
    extensions: Optional[str] = typer.Option(None, "--extensions", help="Extensions to take from folders: mp3,wav."),
    single: bool = typer.Option(False, "--single", help="One label per file (argmax) with a softmax confidence."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Keep the k best labels per file."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Keep labels whose cosine score is >= this (-1..1)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, jsonl, csv, or parquet (with --embeddings and -o)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=0,
        help="Decode processes, and threads for the musicnn models on a CPU (default: all cores; 0: decode in this process).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the embedding cache."),
    offset: float = typer.Option(0.0, "--offset", min=0.0, help="Start this many seconds into each file."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0.001, help="Use at most this many seconds"),
    device: str = typer.Option(
        "auto", "--device",
        help="Where the audio model runs: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N; checked when a file must be embedded.",
    ),
    bf16: bool = typer.Option(
        False, "--bf16",
        help="On a CPU with native bfloat16 products (AMX): ~2x faster embedding, scores within ~0.01 of float32; cached apart.",
    ),
    sample_seconds: Optional[float] = _SAMPLE_SECONDS,
    write_tags: bool = typer.Option(
        False, "--write-tags",
        help="Also write each file's chosen labels into its tags (field ZSTAG, best first; ZSTAG_MODEL: the model id). "
             "Audio untouched; a tagged copy replaces the file atomically.",
    ),
    tag_field: str = typer.Option(
        "zstag", "--tag-field", help="With --write-tags: zstag (default), or a standard field: genre, mood, grouping, comment."),
    append: bool = typer.Option(False, "--append", help="With --tag-field: add the labels the field lacks instead of replacing it."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --write-tags: print each file's old and new tag values; write nothing."),
) -> None:
    from zstag.cli_run import run_tag
    from zstag.devices import Target

    global _quick_exit
    _quick_exit = True
    if embeddings is not None:
        from zstag.cli_run import run_tag_set

        if paths or write_tags or offset or max_seconds is not None or bf16:
            fail("--embeddings scores the set's rows: no PATH, --write-tags, --offset, --max-seconds or --bf16", 2)
        raise typer.Exit(run_tag_set(embeddings, labels=labels, labels_file=labels_file, model=model, vectors=vectors,
                                     single=single, top_k=top_k, threshold=threshold, fmt=fmt, output=output))
    if not paths:
        fail("give the audio files or folders to tag (PATH), or --embeddings DIR", 2)
    code = run_tag(
        paths, labels=labels, labels_file=labels_file, model=model, vectors=vectors, extensions=extensions,
        single=single, top_k=top_k, threshold=threshold, fmt=fmt, output=output, workers=workers,
        use_cache=not no_cache, offset=offset, max_seconds=max_seconds, device=Target(device, bf16),
        sample_seconds=sample_seconds, write_tags=write_tags, tag_field=tag_field, append=append, dry_run=dry_run,
    )
    raise typer.Exit(code)


# --- embed (embedset.py) -------------------------------------------------------


@command("embed")
def embed_command(
    paths: Optional[List[str]] = typer.Argument(None, metavar="[PATH]...", help="Audio files, folders (recursive) or URIs (s3://..., file://...)."),
    out: str = typer.Option(..., "--out", help="The embedding set (a Parquet folder) to create or resume."),
    from_list: Optional[List[str]] = typer.Option(None, "--from-list", help="A text file of paths, one per line ('-': stdin); repeatable."),
    model: str = _SEARCH_MODEL, extensions: Optional[str] = _SEARCH_EXTENSIONS,
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (a Ray cluster: pip install 'zstag[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="--engine ray: the cluster (auto: the one `ray start` made); default: a local Ray."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="local: decode processes (default: all cores); ray: model actors."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", min=0.0, help="--engine ray: GPUs per actor."),
    part_files: int = typer.Option(256, "--part-files", min=1, help="Rows per part file (a kill loses at most one part's work)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="local: neither read nor write the SQLite embedding cache."),
    device: str = _SEARCH_DEVICE, no_progress: bool = _SEARCH_NO_PROGRESS,
    bf16: bool = typer.Option(False, "--bf16", help="As tag --bf16 (the set's precision is bfloat16)."),
) -> None:
    """Embed audio into an embedding set: a Parquet folder, one row per file (path, content digest, size, duration,
    model, embedding or error). Resumable: a rerun embeds only what the set lacks. Query it with
    `zstag tag --embeddings DIR` and `zstag search QUERY --embeddings DIR` (no audio, no torch)."""
    from zstag.cli_run import run_embed
    from zstag.devices import Target

    global _quick_exit
    _quick_exit = True
    ray_options = {k: v for k, v in (("address", ray_address), ("gpus_per_worker", gpus_per_worker)) if v is not None}
    if engine == "ray" and workers is not None:
        ray_options["actors"] = workers
    code = run_embed(list(paths or []), out, lists=list(from_list or []), model=model, extensions=extensions,
                     engine=engine, part_files=part_files, workers=None if engine == "ray" else workers,
                     use_cache=not no_cache, device=Target(device, bf16), progress=not no_progress,
                     ray_options=ray_options)
    raise typer.Exit(code)


# --- eval (evaluate.py) ------------------------------------------------------

@command("eval", help=EVAL_HELP)
def eval_command(
    corpus: str = typer.Option(..., "--corpus", "-c", help="Corpus kind: gtzan, mtat, msd, folder or csv."),
    root: Path = typer.Option(..., "--root", "-r", help="The corpus root folder (or manifest / annotations file)."),
    model: str = typer.Option("default", "--model", "-m", help="Model folder, or a name in models/."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split JSON: seen/unseen labels and the test tracks."),
    labels: Optional[List[str]] = typer.Option(
        None, "--labels", "-l", help="Evaluate only these corpus labels (comma-separated, repeatable)."),
    top_n: Optional[int] = typer.Option(None, "--top-n", min=1, help="mtat/msd/csv: only the N most frequent labels."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every figure as JSON here (atomically)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Single-label corpora: confusion matrix PNG here."),
    vectors: Optional[str] = typer.Option(None, "--vectors", help="Word-vector file (default: the model's)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=0,
        help="Decode processes, and threads for the musicnn models on a CPU (default: all cores; 0: decode in this process).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the embedding cache."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0.001, help="Use at most this many seconds per track."),
    device: str = typer.Option("auto", "--device", help="Where the audio model runs: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."),
    bf16: bool = typer.Option(False, "--bf16", help="As tag --bf16 (a CPU with AMX: ~2x faster embedding; the report says so)."),
) -> None:
    from zstag import evaluate
    from zstag.cli_run import show_eval, warner
    from zstag.corpora import KINDS
    from zstag.devices import Target
    from zstag.paths import check_distinct
    from zstag.progress import Bar
    from zstag.tagger import parse_labels

    global _quick_exit
    _quick_exit = True
    if corpus not in KINDS:
        fail(f"--corpus: unknown kind {corpus!r}: expected one of {', '.join(KINDS)}", 2)
    runs_on = Target(device, bf16)
    runs_on.device  # eval loads torch anyway: an unusable GPU is a usage error before any work
    for target, option in ((out, "--out"), (plot, "--plot")):
        if target is not None and not target.parent.is_dir():
            fail(f"{target}: the folder for {option} does not exist", 2)
        if target is not None and target.is_dir():
            fail(f"{target}: {option} names a folder, not a file", 2)
    if plot is not None:  # before any work: the figure is drawn last
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("--plot needs matplotlib, which is not installed: install zstag's plot extra (pip install -e '.[plot]')", 2)
    check_distinct({"--out": out, "--plot": plot})
    chosen = parse_labels(labels) if labels else None
    with Bar("embedding") as bar:  # labels, options, the model and its word vectors: usage errors, as in tag
        result = evaluate.evaluate(
            corpus, root, model=model, split=split, labels=chosen, top_n=top_n, vectors=vectors, workers=workers,
            use_cache=not no_cache, max_seconds=max_seconds, device=runs_on, progress=bar, notice=warner(),
            outputs={"--out": out, "--plot": plot},  # refused if one would replace an input, before any decoding
        )
    show_eval(result, out, plot)


# --- search / similar (search.py) ----------------------------------------------

def _run_search(query, paths, **options) -> None:
    from zstag.cli_run import run_search

    global _quick_exit
    _quick_exit = True
    code = run_search(query, paths, **options)
    raise typer.Exit(code)


@command("search", help=SEARCH_HELP)
def search_command(
    args: Optional[List[str]] = typer.Argument(None, metavar="QUERY [PATH]...", help="The query, then files and/or folders."),
    labels: Optional[List[str]] = typer.Option(
        None, "--labels", "-l", help="Several query labels, comma-separated (repeatable); then every argument is a PATH."),
    labels_file: Optional[str] = typer.Option(None, "--labels-file", help="Query labels, one per line."),
    vectors: Optional[str] = typer.Option(None, "--vectors", help="Word-vector file (default: the model's)."),
    embeddings: Optional[str] = typer.Option(
        None, "--embeddings", help="Search the rows of this embedding set (`zstag embed`) instead of PATHs (-f parquet too)."),
    limit: int = _LIMIT, fmt: str = _SEARCH_FORMAT, output: Optional[str] = _SEARCH_OUTPUT, model: str = _SEARCH_MODEL,
    extensions: Optional[str] = _SEARCH_EXTENSIONS, workers: Optional[int] = _SEARCH_WORKERS,
    no_cache: bool = _SEARCH_NO_CACHE, device: str = _SEARCH_DEVICE, no_progress: bool = _SEARCH_NO_PROGRESS,
    sample_seconds: Optional[float] = _SAMPLE_SECONDS,
) -> None:
    args = list(args or [])
    query = None
    if not labels and labels_file is None:
        if not args:
            fail("give a QUERY (or --labels)", 2)
        query, args = args[0], args[1:]
    if embeddings is not None:
        from zstag.cli_run import run_search_set

        if args:
            fail("--embeddings searches the set's rows: no PATH", 2)
        raise typer.Exit(run_search_set(embeddings, query, labels=labels, labels_file=labels_file, model=model,
                                        vectors=vectors, limit=limit, fmt=fmt, output=output))
    options = _search_options(model, vectors, extensions, limit, fmt, output, workers, no_cache, device, no_progress,
                              sample_seconds)
    _run_search(query, args, labels=labels, labels_file=labels_file, **options)


@command("similar")
def similar_command(
    file: str = typer.Argument(..., metavar="FILE", help="The track to find more like."),
    paths: Optional[List[str]] = typer.Argument(None, metavar="[PATH]...", help="Files and/or folders to search (default: the cache's)."),
    limit: int = _LIMIT, fmt: str = _SEARCH_FORMAT, output: Optional[str] = _SEARCH_OUTPUT, model: str = _SEARCH_MODEL,
    extensions: Optional[str] = _SEARCH_EXTENSIONS, workers: Optional[int] = _SEARCH_WORKERS,
    no_cache: bool = _SEARCH_NO_CACHE, device: str = _SEARCH_DEVICE, no_progress: bool = _SEARCH_NO_PROGRESS,
    sample_seconds: Optional[float] = _SAMPLE_SECONDS,
) -> None:
    """The tracks nearest to FILE in the joint space ("more like this"), best first; FILE itself left out."""
    options = _search_options(model, None, extensions, limit, fmt, output, workers, no_cache, device, no_progress,
                              sample_seconds)
    _run_search(None, list(paths or []), similar_to=file, **options)


def main() -> None:
    global _quick_exit
    from zstag import signals

    _quick_exit = False  # set again by the command, if it allows it
    signals.install()  # SIGTERM cleans up as Ctrl-C does
    try:
        app()
    except SystemExit as exc:
        signals.end_if_terminated()
        if not (_quick_exit and "torch" in sys.modules):
            raise
        _exit_now(exc.code)


def _exit_now(code) -> None:
    """Exit as SystemExit(code) would, minus the interpreter's teardown of its modules: the atexit
    handlers run and stdout and stderr are flushed, then the process ends."""
    import atexit

    if not isinstance(code, int):
        if code is not None and sys.stderr is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None when Python started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
