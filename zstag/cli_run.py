"""What `zstag tag`, `search`, `similar` and `embed` show (and tag / search over an embedding set): the library's results written out (stdout or a file),
its notes, per-file errors and a summary on stderr, one line each, and the exit code (0; 1 when some file
failed, nothing was found or the output could not be written). Errors that stop a run before any output
(UsageError: exit 2) are raised, for cli.py to report.
"""

from __future__ import annotations

import os
import sys

from zstag.paths import atomic_write
from zstag.progress import Bar


def say(line: str) -> None:
    """One line on stderr, "zstag: " first."""
    print(f"zstag: {line}", file=sys.stderr)


def warner():
    """A run's notice callback (errors.notify): each distinct notice once, as "zstag: warning: …" on stderr."""
    seen: set[str] = set()

    def notice(text: str) -> None:
        if text not in seen:
            seen.add(text)
            say(f"warning: {text}")

    return notice


def run_tag(inputs: list[str], *, workers: int | None = None, use_cache: bool = True, progress: bool = True,
            output: str | None = None, fmt: str = "table", labels_file: str | None = None,
            vectors: str | None = None, **options) -> int:
    """`zstag tag`: tagger.prepare (options: its keywords), the files found, tagger.tag, the output written;
    returns the exit code."""
    from zstag import scoring, tagger

    job = tagger.prepare(fmt=fmt, output=output, labels_file=labels_file, vectors=vectors, **options)
    for note in job.notes:
        say(f"note: {note}")
    if output is None and sys.stdout is None:  # started with descriptor 1 closed: nothing to decode for
        say("error: cannot write to stdout: it is closed")
        return 1
    found = tagger.find_audio_files(inputs, job.extensions)
    if output is not None:
        tagger.check_tag_output(output, found, labels_file, vectors, job.files.folder)
    for line in found.problems:
        say(line)
    with Bar("embedding", progress) as bar:
        done = tagger.tag(job, found, workers=workers, use_cache=use_cache, progress=bar, notice=warner())
    for line in done.failures:
        say(line)
    failures = found.problems + done.failures
    written = done.written
    if written is not None:
        for line in written.failures:
            say(line)
        for line in written.warnings:
            say(f"warning: {line}")
    if job.dry_run:
        text = written.dry_run_text()
    else:
        text = tagger.render(done.records, fmt, single=job.single, labels=job.labels, model_id=job.files.model_id,
                             bf16=job.target.bf16, width=_width(output),
                             score_note=scoring.note(job.files.config, tagger.SCORE_NOTE))
    if output is not None and not done.records:  # a run that tagged nothing never replaces a previous result
        state = "left as it was" if os.path.lexists(output) else "not written"
        say(f"{output} {state}: no file was tagged")
    elif not write_output(text, output):
        return 1

    if not found.files and not found.problems:
        say("no audio files found in the inputs")
        return 1
    good = len(done.records)
    parts = [f"tagged {good} of {good + len(failures)} files ({done.cached} from the cache)"]
    if failures:
        parts.append(f"{len(failures)} failed")
    if found.duplicates:
        parts.append(f"{found.duplicates} duplicate path(s) skipped")
    if written is not None:
        parts.append(f"tags {'to write' if job.dry_run else 'written'}: "
                     f"{sum(c.changed for c in written.changes) if job.dry_run else written.written} file(s)"
                     + (f", {len(written.failures)} not tagged" if written.failures else ""))
    say("; ".join(parts))
    return 1 if failures or (written is not None and written.failures) else 0


def run_search(query: str | None, inputs: list[str], *, progress: bool = True, fmt: str = "table",
               output: str | None = None, **options) -> int:
    """`zstag search` / `zstag similar`: search.search (options: its keywords), the ranked tracks written
    out; returns the exit code."""
    from zstag import search

    with Bar("embedding", progress) as bar:
        ranked = search.search(query, inputs, fmt=fmt, output=output, progress=bar, notice=warner(), **options)
    library = ranked.library
    for line in library.failures:
        say(line)
    if ranked.error is not None:
        say(f"error: {ranked.error}")
        return 1
    text = search.render(ranked.records, fmt, query=ranked.about, model_id=ranked.model_id, output=output,
                         width=_width(output), score_note=ranked.score_note)
    if not write_output(text, output):
        return 1
    say(f"searched {len(library.tracks)} tracks ({library.cached} from the cache)"
        + (f"; {len(library.failures)} failed" if library.failures else ""))
    if not library.tracks:
        hint = " in the embedding cache: give the files or folders to search" if library.from_cache else ""
        say(f"no tracks to search{hint}")
        return 1
    return 1 if library.failures else 0


def run_tag_set(folder: str, **options) -> int:
    """`zstag tag --embeddings DIR`: setquery.tag (options: its keywords), written out; the exit code (1 when
    the set has rows of failed files)."""
    from zstag import scoring, setquery, tagger

    result = setquery.tag(folder, **options)
    fmt, output = options.get("fmt", "table"), options.get("output")
    text = None if fmt == "parquet" else tagger.render(
        result.records, fmt, single=options.get("single", False), labels=result.labels,
        model_id=result.files.model_id, bf16=result.precision == "bfloat16", width=_width(output),
        score_note=scoring.note(result.files.config, tagger.SCORE_NOTE))
    total = result.rows + len(result.failures)
    return _set_output(result, text, output, f"tagged {result.rows} of {total} files (from the embedding set {folder})")


def run_search_set(folder: str, query: str | None, **options) -> int:
    """`zstag search QUERY --embeddings DIR`: setquery.search (options: its keywords), written out; the exit code."""
    from zstag import scoring, search, setquery

    result = setquery.search(folder, query, **options)
    fmt, output = options.get("fmt", "table"), options.get("output")
    text = None if fmt == "parquet" else search.render(
        result.records, fmt, query={"labels": result.labels}, model_id=result.files.model_id, output=output,
        width=_width(output), score_note=scoring.note(result.files.config, search.SEARCH_NOTE))
    return _set_output(result, text, output, f"searched {result.rows} tracks (from the embedding set {folder})",
                       empty="no tracks to search")


def _set_output(result, text: str | None, output: str | None, summary: str, empty: str | None = None) -> int:
    """A set query's failed rows (one line each), its output (text, or else its -f parquet table) and summary;
    empty: the line (and exit 1) when no row was scored."""
    from zstag.setquery import parquet_pieces

    for line in result.failures:
        say(line)
    if not write_output(parquet_pieces(result.table) if text is None else text, output):
        return 1
    say(summary + (f"; {len(result.failures)} failed when embedded" if result.failures else ""))
    if empty is not None and not result.rows:
        say(empty)
        return 1
    return 1 if result.failures else 0


def run_embed(inputs: list[str], out: str, *, progress: bool = True, **options) -> int:
    """`zstag embed`: embedset.run (options: its keywords) with each input not read and each error row on
    stderr as they come, then the summary; the exit code (1 when some input failed)."""
    from zstag import embedset

    with Bar("embedding", progress) as bar:
        done = embedset.run(inputs, out, progress=bar if progress else None, note=say, notice=warner(), **options)
    say(f"{out}: embedded {done.embedded} of {done.embedded + done.failed} files"
        + (f" ({done.failed} failed: error rows)" if done.failed else "")
        + f"; {done.skipped} already there, {done.copied} copied from rows of the same content"
        + (f"; {len(done.problems)} not read (no row: tried again next run)" if done.problems else "")
        + (f"; {done.replaced} row(s) of changed files replaced" if done.replaced else "")
        + (f"; {done.duplicates} duplicate path(s) skipped" if done.duplicates else ""))
    return 1 if done.failed or done.problems else 0


def _width(output: str | None) -> int | None:
    """The terminal's width when the text goes to one; None: the formats' own width."""
    import shutil

    terminal = output is None and sys.stdout is not None and sys.stdout.isatty()
    return shutil.get_terminal_size().columns if terminal else None


def write_output(text, output: str | None) -> bool:
    """Write text to stdout (output None) or atomically to the file output (a link's target replaced);
    False, with one line on stderr, when it could not be written. Used by tag, search and similar.
    text: a str, or for a file a list of bytes-like pieces (-f parquet)."""
    if output is None:
        error = write_stdout(text)
        if error:
            say(f"error: cannot write to stdout: {error}")
            return False
        return True
    try:  # tag's formats are valid Unicode (render); an m3u8 keeps a non-UTF-8 name's bytes: the player opens it
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        atomic_write(output, data, follow_links=True)
    except OSError as exc:
        say(f"error: {output}: cannot write: {exc.strerror or exc}")
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


def show_eval(result, out, plot) -> None:
    """`zstag eval`'s output: the report written to --out and the confusion matrix to --plot, the left-out,
    failed, warning and note lines and the summary on stderr, then the table on stdout; typer.Exit(1)
    when some track failed (the figures leave it out)."""
    import typer
    from rich.console import Console

    from zstag import evaluate, evalrender
    from zstag.cli_options import _write_or_fail, fail

    report = result.report
    # Files and stderr first, the table last: a reader that closes stdout early (| head) cuts only the table.
    draw = plot is not None and report["task"] == "classification"
    if out is not None:
        _write_or_fail(out, lambda: evaluate.write_report(report, out))
    if draw:
        _write_or_fail(plot, lambda: evalrender.plot_confusion(report, plot))
    if report["corpus"]["left_out"]:
        typer.echo(f"zstag: {report['corpus']['left_out']}", err=True)
    for failure in report["tracks"]["failed"]:
        typer.echo(f"zstag: {failure['error']}", err=True)
    for warning in report["warnings"]:
        typer.echo(f"zstag: warning: {warning}", err=True)
    for note in report["labels"]["likely_typos"]:
        typer.echo(f"zstag: note: {note}", err=True)
    if plot is not None and not draw:
        typer.echo("zstag: warning: --plot draws the confusion matrix of single-label corpora; nothing drawn", err=True)
    failed = len(report["tracks"]["failed"])
    typer.echo(f"zstag: evaluated {report['tracks']['evaluated']} of {report['tracks']['selected']} tracks "
               f"({result.cached} from the cache)" + (f"; {failed} failed" if failed else ""), err=True)
    if out is not None:
        typer.echo(f"zstag: report written to {out}", err=True)
    if draw:
        typer.echo(f"zstag: confusion matrix written to {plot}", err=True)
    if sys.stdout is None:  # started with descriptor 1 closed: the table has nowhere to go
        fail("cannot write the table to stdout: it is closed")
    try:
        evalrender.render(report, Console())  # a pipe closed early (| head): rich sends the rest to /dev/null, exit 1
    except OSError as exc:  # a full disk, an I/O error
        fail(f"cannot write the table to stdout: {exc.strerror or exc}")
    if failed:  # as tag: the figures leave those tracks out
        raise typer.Exit(1)


def show_labels(names: list[str], vectors, nearest: int, model: str = "default") -> None:
    """`zstag labels`: each label's normalised form, words used and nearest words, and for a calibrated model
    which path scores it (scoring.teacher_word), as a table; unknown labels are one usage error after the table."""
    import typer

    from zstag.cli_options import fail

    from rich.console import Console
    from rich.table import Table

    from zstag.spelling import typo_note
    from zstag.words import UnknownLabelError, WordVectors

    from zstag import modelfile, scoring

    try:
        config = modelfile.read_model(model).config
    except modelfile.ModelError as exc:
        fail(str(exc), 2)
    calibrated = scoring.is_calibrated(config)
    wv = WordVectors.load(vectors)
    table = Table(title=f"labels in {wv.source} ({wv.dim}-d)")
    for column in ("label", "normalised", "words used", "in vocabulary", "nearest words") + (("scored by",) if calibrated else ()):
        table.add_column(column)
    errors = []
    for name in names:
        try:
            phrase = wv.phrase(name)
        except UnknownLabelError as e:
            errors.append(str(e))
            continue
        near = wv.nearest(phrase.vector, nearest + len(phrase.words)) if nearest else []
        near = [f"{w} {s:.2f}" for w, s in near if w not in phrase.words][:nearest]
        how = "yes" if phrase.in_vocab else f"composed ({len(phrase.words)} words)"
        denied = wv.negated(name)
        if denied is not None:  # modelfile.label_embeddings
            how += f'; a model scores it as the opposite of "{denied}" (unless it trained on it)'
        row = [name, phrase.normalised, " + ".join(phrase.words), how, ", ".join(near)]
        if calibrated:  # as modelfile.label_embeddings: a denial takes the path of what it denies
            word = scoring.teacher_word(config, denied or name, wv)
            row.append(f'the taggers\' "{word}"' if word else "the joint space (cosine)")
        table.add_row(*row)
        note = typo_note(wv, name)
        if note:
            typer.echo(f"zstag: note: {note}", err=True)
    if table.row_count:
        Console().print(table)
    if errors:  # an unknown label is a usage error, as in tag
        fail("; ".join(errors), 2)


def run_train(*, features, out, split, unseen, unseen_fraction, split_by, val_fraction, test_fraction, seed, epochs,
              batch_size, lr, optimizer, negatives, epoch_size, early_stop, lr_patience, val_samples, vectors,
              batch_norm, device, loader_workers, threads, resume, no_progress) -> None:
    """`zstag train`: every check before anything is written, then the run with its progress bar and summary."""
    from pathlib import Path

    import typer

    from zstag.cli_options import _cache_corpus, _check_split_options, _split_for, _write_or_fail, fail
    from zstag.devices import pick_device
    from zstag.features import FeatureCache
    from zstag.paths import Input, check_output
    from zstag.progress import Bar
    from zstag.splits import check_split, save_split
    from zstag.train import SPLIT_FILE, TrainError, TrainOptions, has_checkpoint, train
    from zstag.words import VectorsError, parse_random_source

    # Everything that can be checked is checked before anything is written: a refused run leaves --out as it was.
    options = TrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, negatives=negatives, lr_patience=lr_patience,
        early_stop=early_stop, epoch_size=epoch_size, val_samples=val_samples, seed=seed, batch_norm=batch_norm, device=device,
        loader_workers=loader_workers, threads=threads,
    )
    try:
        options.check()
        parse_random_source(vectors)
    except TrainError as exc:
        fail(str(exc), 2)
    except VectorsError as exc:
        fail(f"--vectors {exc}", 2)
    if split is None:
        _check_split_options(unseen, unseen_fraction, split_by, val_fraction, test_fraction)
    pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    cache = FeatureCache.open(features)
    data = _cache_corpus(features)
    saved_split = out / SPLIT_FILE
    read = [Input("the feature cache", features, whole=True)]  # and --split, --vectors when they are files
    read += [Input(what, path) for what, path in (("the split file", split), ("the word-vector file", vectors)) if path]
    check_output(out, "--out", read, folder=True, allowed=[saved_split])  # a split kept in --out is read back
    if split is None and resume and saved_split.is_file():
        split = saved_split  # the resumed run keeps the split it was started with
    the_split = _split_for(data, split, seed, unseen, unseen_fraction, split_by, val_fraction, test_fraction)
    if split is not None:
        absent = check_split(the_split, data)
        if absent:
            typer.echo(f"zstag: warning: {len(absent)} tracks of the split are not in the feature cache; skipped",
                       err=True)

    afresh = resume and not has_checkpoint(out)  # the run to resume stopped before its first checkpoint

    def save_the_split() -> None:
        # The model folder always keeps the split it was trained on; train() calls this on rank 0 only, once
        # the vectors, the resume state and --out have passed its checks.
        if afresh:
            typer.echo(f"zstag: note: {out}: no checkpoint to resume from yet; starting at epoch 1", err=True)
        if split is None or Path(split).resolve() != saved_split.resolve():
            _write_or_fail(saved_split, lambda: save_split(the_split, saved_split))

    with Bar("train", not no_progress) as bar:
        result = train(
            cache, the_split.tracks("train"), the_split.tracks("validation"), the_split.seen, out, options,
            vectors_source=vectors, split_sha256=the_split.sha256, corpus_name=the_split.corpus, resume=resume,
            progress=bar, log=bar.log, on_start=save_the_split,
        )
    if "model_id" in result:
        typer.echo(f"{out}: model {result['model_id']}, best epoch {result['best_epoch']} of {result['epochs']} "
                   f"(validation loss {result['best_val_loss']:.4f})" + (", stopped early" if result["stopped_early"] else ""))
