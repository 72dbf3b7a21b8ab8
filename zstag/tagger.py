"""`zstag tag`: score audio files against free-text labels in the joint audio–word space.

What the scores mean
--------------------
Each file is embedded as a whole track: the mean of the embeddings of *all* its ~3 s segments
(optionally within --offset/--max-seconds; with --sample-seconds N, of k whole segments at evenly
spread places: windows.py), never a random crop, so two runs give identical scores.
Each label goes through its word vector and the model's label branch. The score of (file, label) is
the model's (scoring.py): the cosine similarity of the two embeddings, in [-1, 1], or for a calibrated
model (the default) a standard score against a reference library through the normal CDF, in (0, 1).
Higher means the track fits the label better. It is not a probability: a cosine's absolute level
depends on the model and on the label; a calibrated score is on one scale for every label of its model.

Multi-label output lists every label with its score, best first (--top-k keeps the best k,
--threshold drops scores below it). --single picks one label per file, the argmax, with a confidence
softmax(score / SOFTMAX_TEMPERATURE) over the given labels: a share among the candidates that sums
to 1 over them, not a calibrated probability, and it changes when the label set changes. With
--single, --threshold leaves a file unlabelled (label null) when its best score is below it.

Files that fail (unreadable, corrupt, empty...) are left out of the output; each gets one line on
stderr naming the file and the cause, and the exit code is 1.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zstag.paths import Input, OutputError, check_output, one_line, walk
from zstag.render import csv_text, portable
from zstag.errors import UsageError

FORMATS = ("table", "json", "jsonl", "csv")
SOFTMAX_TEMPERATURE = 0.1  # score gaps of ~0.1 between labels become ~e:1 odds in --single confidence
SCORE_DIGITS = 6  # decimals written to json/jsonl/csv
TABLE_DIGITS = 3
SCORE_NOTE = "score: cosine similarity of track and label embeddings, -1..1 (higher = closer; not a probability)"
SINGLE_NOTE = f"confidence: softmax over the given labels of score / {SOFTMAX_TEMPERATURE} (relative among them)"


class TagUsageError(UsageError):
    """Bad options or inputs that stop the run (exit code 2), before any result is written: most before any
    audio is decoded; an unusable device or a model whose audio weights are damaged while the first files
    decode (the torch model is built then)."""


@dataclass
class Found:
    files: list[str]  # audio files, in discovery order, each real file once
    problems: list[str]  # one-line errors: inputs that do not exist, folders or links that cannot be read
    duplicates: int  # paths skipped because they name a file already found
    ids: dict[tuple[int, int], str] = field(default_factory=dict)  # (st_dev, st_ino) of each file → its path
    problem_paths: list[str] = field(default_factory=list)  # the path each line of problems names

    def problem(self, path: str, cause: str) -> None:
        self.problems.append(f"{path}: {cause}")
        self.problem_paths.append(path)


# --- labels -------------------------------------------------------------------------------------


def parse_labels(values: list[str] | None, labels_file: str | os.PathLike | None = None) -> list[str]:
    """``labels.parse_labels`` (comma-separated --labels values and a one-per-line file), its errors as
    TagUsageError."""
    from zstag.labels import LabelsError
    from zstag.labels import parse_labels as parse

    try:
        return parse(values, labels_file)
    except LabelsError as exc:
        raise TagUsageError(str(exc)) from None


# --- inputs -------------------------------------------------------------------------------------


def parse_extensions(text: str | None) -> frozenset[str]:
    """"mp3,.WAV" → {".mp3", ".wav"}; None → every audio extension zstag knows."""
    from zstag.corpora import AUDIO_EXTENSIONS

    if text is None:
        return frozenset(AUDIO_EXTENSIONS)
    extensions = frozenset("." + e.strip().lstrip(".").lower() for e in text.split(",") if e.strip().lstrip("."))
    if not extensions:
        raise TagUsageError(f"--extensions {text!r}: no extensions")
    return extensions


def find_audio_files(inputs: list[str], extensions: frozenset[str]) -> Found:
    """Files named on the command line (any extension) and audio files under folders, recursively.

    Folders are walked in sorted order, at any depth (paths.walk: no recursion), following symbolic
    links, but each real folder only once (no loops); hidden files and folders (".name") inside them
    are skipped. A file reached twice (listed twice, inside two given folders, through a link) is kept
    once, at its first position.
    """
    found = Found([], [], 0)
    seen_dirs: set[tuple[int, int]] = set()

    def add(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            found.problem(path, f"cannot read: {exc.strerror or exc}")
            return
        key = (st.st_dev, st.st_ino)
        if key in found.ids:
            found.duplicates += 1
        else:
            found.ids[key] = path
            found.files.append(path)

    def unreadable_folder(exc: OSError) -> None:
        found.problem(str(exc.filename), f"cannot read folder: {exc.strerror or exc}")

    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            for folder, dirs, names in walk(item, onerror=unreadable_folder, follow_links=True):
                try:
                    st = os.stat(folder)
                except OSError as exc:
                    unreadable_folder(exc)
                    continue
                if (st.st_dev, st.st_ino) in seen_dirs:
                    dirs[:] = []
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                        add(os.path.join(folder, name))
        elif os.path.lexists(item):
            add(item)
        else:
            found.problem(item, "no such file or folder")
    return found


# --- scores -------------------------------------------------------------------------------------


def softmax(scores: np.ndarray, temperature: float = SOFTMAX_TEMPERATURE) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def file_records(
    paths: list[str],
    scores: np.ndarray,
    labels: list[str],
    *,
    single: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """One dict per file. Multi: {path, tags: [{label, score}] best first}. Single: {path, label,
    confidence, score}. Scores are rounded to SCORE_DIGITS decimals; ties keep the label order."""
    records = []
    # Rounded first, so that sorting and --threshold act on the very numbers written out.
    for path, row in zip(paths, np.round(np.asarray(scores, dtype=np.float64), SCORE_DIGITS)):
        order = np.argsort(-row, kind="stable")
        if single:
            best = int(order[0])
            keep = threshold is None or row[best] >= threshold
            records.append({
                "path": path,
                "label": labels[best] if keep else None,
                "confidence": round(float(softmax(row)[best]), SCORE_DIGITS),
                "score": float(row[best]),
            })
            continue
        if threshold is not None:
            order = [i for i in order if row[i] >= threshold]
        if top_k is not None:
            order = order[:top_k]
        records.append({"path": path, "tags": [{"label": labels[i], "score": float(row[i])} for i in order]})
    return records


# --- output -------------------------------------------------------------------------------------


def render(
    records: list[dict], fmt: str, *, single: bool, labels: list[str], model_id: str, width: int | None = None,
    bf16: bool = False, score_note: str = SCORE_NOTE,
) -> str:
    """The records as text in one of FORMATS (json's header names the model and its precision: --bf16).
    Valid Unicode whatever the file names (render.portable, render.csv_text; the table escapes control
    characters and bytes that are not UTF-8: paths.one_line, so a row never splits)."""
    if fmt == "json":
        return json.dumps({
            "model": model_id,
            "precision": "bfloat16" if bf16 else "float32",
            "labels": labels,
            "mode": "single" if single else "multi",
            "score": score_note + ("; " + SINGLE_NOTE if single else ""),
            "files": [portable(r) for r in records],
        }, indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(portable(r), ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        if single:
            return csv_text(["path", "label", "confidence", "score"],
                            [[r["path"], r["label"] or "", r["confidence"], r["score"]] for r in records])
        return csv_text(["path", "rank", "label", "score"],
                        [[r["path"], rank, t["label"], t["score"]] for r in records
                         for rank, t in enumerate(r["tags"], 1)])
    if fmt == "table":
        return _table(records, single, width, score_note)
    raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def _table(records: list[dict], single: bool, width: int | None, score_note: str = SCORE_NOTE) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Paths relative to the folder they share, named in the title: long roots would fold every row.
    folders = [os.path.dirname(r["path"]) for r in records]
    root = os.path.commonpath(folders) if folders and len({os.path.isabs(f) for f in folders}) == 1 else ""
    table = Table()
    table.add_column("file", overflow="fold")
    if single:
        table.add_column("label")
        table.add_column("confidence", justify="right")
        table.add_column("score", justify="right")
    else:
        table.add_column("labels (score)")
    for r in records:  # Text, not str: a "[" in a name or label is no rich markup
        name = Text(one_line(os.path.relpath(r["path"], root) if root else r["path"]))
        if single:
            confidence, score = f"{r['confidence']:.{TABLE_DIGITS}f}", f"{r['score']:.{TABLE_DIGITS}f}"
            table.add_row(name, Text(one_line(r["label"] or "—")), confidence, score)
        else:  # no-break spaces inside a "label score" pair: lines wrap between pairs only
            pairs = [f"{one_line(t['label'])} {t['score']:.{TABLE_DIGITS}f}".replace(" ", "\u00a0")
                     for t in r["tags"]]
            table.add_row(name, Text("  ".join(pairs) or "—"))
    console = Console(file=io.StringIO(), width=width or 120, color_system=None, highlight=False)
    if root:
        console.print(Text(f"files in {one_line(root)}"), soft_wrap=True)
    console.print(table)
    console.print(score_note + ("\n" + SINGLE_NOTE if single else ""), soft_wrap=True)
    return console.file.getvalue()


# --- the run ------------------------------------------------------------------------------------


@dataclass
class TagJob:
    """A tag run checked before any audio is read: the options, the model, the labels' embeddings, and the
    notes for the user (likely typos, labels in another number than the model trained on)."""

    files: object  # modelfile.ModelFiles
    labels: list[str]
    label_emb: np.ndarray
    extensions: frozenset[str]
    target: object  # devices.Target
    notes: list[str] = field(default_factory=list)
    single: bool = False
    top_k: int | None = None
    threshold: float | None = None
    offset: float = 0.0
    max_seconds: float | None = None
    write_tags: bool = False
    tag_field: str = "zstag"
    append: bool = False
    dry_run: bool = False
    sample_seconds: float | None = None  # --sample-seconds (windows.py); None: whole tracks


@dataclass
class Tagged:
    """What a tag run did: the records of the files tagged (file_records), a line per file that failed,
    how many came from the cache, and with write_tags the tagfiles.WriteReport."""

    records: list[dict]
    failures: list[str]
    cached: int
    written: object = None


def prepare(
    *,
    labels: list[str] | None = None,
    labels_file: str | None = None,
    model: str = "default",
    vectors: str | None = None,
    extensions: str | None = None,
    single: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
    fmt: str = "table",
    output: str | None = None,
    offset: float = 0.0,
    max_seconds: float | None = None,
    device="cpu",
    bf16: bool = False,
    sample_seconds: float | None = None,
    write_tags: bool = False,
    tag_field: str = "zstag",
    append: bool = False,
    dry_run: bool = False,
) -> TagJob:
    """Check a tag run's options, read the model and embed the labels, before any audio is read.

    write_tags: also write each file's chosen labels into its own tags (tagfiles: tag_field, append);
    dry_run: the output is instead each file's old and new tag values, and no file is written.
    sample_seconds: only that much audio per file, in windows spread over it (windows.py).
    Raises TagUsageError (bad options, model, word vectors or labels) or DeviceError (a malformed --device;
    whether it is usable, and so is bf16, is known only if some file must be embedded: see track_results).
    Imports no torch.
    """
    from zstag import modelfile
    from zstag.audio import check_span
    from zstag.devices import target_of

    try:
        check_span(offset, max_seconds)
    except ValueError as exc:
        raise TagUsageError(f"--offset / --max-seconds: {exc}") from None
    check_sampling(sample_seconds)
    target = target_of(device, bf16)
    if fmt not in FORMATS:
        raise TagUsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if single and top_k is not None:
        raise TagUsageError("--top-k does not apply with --single (one label per file)")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):  # 5 kept nothing
        raise TagUsageError(f"--threshold {threshold}: need a number in -1..1 (cosine scores lie in -1..1, calibrated ones in 0..1)")
    if output is not None and (Path(output).is_dir() or not Path(output).absolute().parent.is_dir()):
        raise TagUsageError(f"{output}: --output must be a file in an existing folder")
    _check_write_options(write_tags, tag_field, append, dry_run)
    label_list = parse_labels(labels, labels_file)
    extension_set = parse_extensions(extensions)
    files, words, label_emb = _model_and_labels(model, vectors, label_list)  # unknown labels stop here
    from zstag.spelling import typo_note

    notes = [note for note in (typo_note(words, label) for label in label_list) if note]  # "jaz": "jazz"?
    from zstag.labels import training_spellings

    for label, (word, trained, instead) in training_spellings(modelfile.train_labels(files.config), label_list).items():
        notes.append(f'"{word}" is not among the model\'s training labels, "{trained}" is: use "{instead}" if that '
                     f'is what you mean by "{label}" (a label the model never trained on scores less reliably)')
    return TagJob(files, label_list, label_emb, extension_set, target, notes, single, top_k, threshold, offset,
                  max_seconds, write_tags, tag_field, append, dry_run, sample_seconds)


def _model_and_labels(model, vectors, label_list):
    """(modelfile.ModelFiles, words.WordVectors, the labels' embeddings); their errors as TagUsageError."""
    from zstag import modelfile
    from zstag.words import UnknownLabelError, VectorsError, load_words

    try:
        files = modelfile.read_model(model)
        words = load_words(files, vectors)
        return files, words, modelfile.label_embeddings(files, words, label_list)
    except (modelfile.ModelError, VectorsError, UnknownLabelError) as exc:
        raise TagUsageError(str(exc)) from None


def tag(job: TagJob, found: Found, *, workers: int | None = None, use_cache: bool = True,
        progress=None, notice=None) -> Tagged:
    """Embed the files found (track_results), score them against the job's labels and, with write_tags,
    write the chosen labels into them. A file that fails is a line in Tagged.failures; found.problems
    are the caller's to report. progress, notice: as embeddings.embed_files."""
    from zstag import scoring

    if job.write_tags:  # the digests the scores come from: a file that changes before it is tagged is refused
        from zstag.embedcache import file_digests

        digests = file_digests(found.files, workers=workers, use_cache=use_cache, notice=notice)
        digests = dict(zip(found.files, digests))
    results = track_results(job.files, found.files, workers=workers, use_cache=use_cache, offset=job.offset,
                            max_seconds=job.max_seconds, progress=progress, device=job.target,
                            sample_seconds=job.sample_seconds, notice=notice)
    good = [r for r in results if r.ok]
    if good:
        scores = scoring.scores(job.files.config, np.stack([r.embedding for r in good]), job.label_emb)
    else:
        scores = np.zeros((0, len(job.labels)), dtype=np.float32)
    records = file_records([r.path for r in good], scores, job.labels, single=job.single, top_k=job.top_k,
                           threshold=job.threshold)
    written = None
    if job.write_tags:
        from zstag.tagfiles import write_records

        written = write_records(records, job.files.model_id, digests, field=job.tag_field, append=job.append,
                                dry_run=job.dry_run, use_cache=use_cache, notice=notice)
    return Tagged(records, [r.error for r in results if not r.ok], sum(r.cached for r in good), written)


def _check_write_options(write_tags: bool, tag_field: str, append: bool, dry_run: bool) -> None:
    from zstag.tagfiles import FIELDS, ZSTAG_FIELD

    if (append or dry_run or tag_field != ZSTAG_FIELD) and not write_tags:
        raise TagUsageError("--tag-field, --append and --dry-run go with --write-tags")
    if tag_field not in FIELDS:
        raise TagUsageError(f"--tag-field {tag_field!r}: choose from {', '.join(FIELDS)}")
    if append and tag_field == ZSTAG_FIELD:
        raise TagUsageError("--append applies to a standard --tag-field (genre, mood, grouping, comment); "
                            "the zstag field always holds the latest labels")


def check_tag_output(output: str, found: Found, labels_file, vectors, model_folder) -> None:
    """TagUsageError when --output would replace one of the run's inputs (paths.check_output): an audio
    file (through links or a hard link too), the labels file, the word-vector file, the model's files."""
    from zstag.modelfile import CONFIG_FILE, WEIGHTS_FILE

    inputs = [Input("the input file", path) for path in found.files]
    if labels_file is not None:
        inputs.append(Input("the labels file", labels_file))
    if vectors is not None:
        inputs.append(Input("the word-vector file", vectors))
    inputs += [Input("the model file", Path(model_folder) / name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    try:
        check_output(output, "--output", inputs)
    except OutputError as exc:
        raise TagUsageError(str(exc)) from None


def track_results(files, paths: list[str], *, workers: int | None = None, use_cache: bool = True,
                  offset: float = 0.0, max_seconds: float | None = None, progress=None,
                  device="cpu", bf16: bool = False, sample_seconds: float | None = None, notice=None) -> list:
    """A TrackResult per path, in order: all from the embedding cache when every file is there (no torch,
    no decoding); otherwise the model is built (torch) and ``embed_files`` embeds only the misses (their
    digests are remembered, not hashed again) on device. The device is checked and the model built on a
    thread while the first files decode, and so is bf16's need of a CPU with native bfloat16.
    files: modelfile.ModelFiles. device: a devices.Target, or its name with bf16. sample_seconds: embeddings
    of that much audio per track (windows.py), cached apart. notice: as embeddings.embed_files."""
    from zstag.devices import DeviceError, target_of
    from zstag.embedcache import EmbeddingCache, cache_id
    from zstag.embeddings import ModelBuild, cached_results, embed_files
    from zstag.modelfile import ModelError
    from zstag.workers import start_decoders

    target = target_of(device, bf16)
    cache = EmbeddingCache.open_default(notice) if use_cache else None
    try:
        if cache is not None:
            results = cached_results(cache_id(files.model_id, target.bf16, sample_seconds), paths, offset=offset, max_seconds=max_seconds, workers=workers,
                                     cache=cache)
        else:
            results = [None] * len(paths)
        if all(r is not None for r in results):
            return results
        if workers != 0:
            start_decoders()  # the decoders' fork server loads its modules while torch loads here
        # Decoding starts while torch is imported, the device checked and the model built on a thread.
        net = ModelBuild(functools.partial(_build_model, files, target), files.model_id, _front_end(files))
        missing = [i for i, r in enumerate(results) if r is None]  # the hits are not looked up again
        try:
            embedded = embed_files(net, [paths[i] for i in missing], workers=workers, use_cache=cache is not None,
                                   cache=cache, offset=offset, max_seconds=max_seconds, progress=progress,
                                   device=target, sample_seconds=sample_seconds, notice=notice)
        except (DeviceError, ModelError) as exc:
            raise TagUsageError(str(exc)) from None
        for i, result in zip(missing, embedded):
            results[i] = result
        return results
    finally:
        if cache is not None:
            cache.close()


def check_sampling(sample_seconds: float | None) -> None:
    """TagUsageError unless --sample-seconds is absent or a finite number of seconds > 0 (windows.py)."""
    from zstag.windows import SampleSecondsError, check_sample_seconds

    try:
        check_sample_seconds(sample_seconds)
    except SampleSecondsError as exc:
        raise TagUsageError(f"--sample-seconds: {exc}") from None


def _front_end(files):
    """The model's audio.FrontEnd, read without torch."""
    from zstag import modelfile
    from zstag.audio import FrontEnd

    try:
        return FrontEnd.from_dict(files.config["front_end"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TagUsageError(str(modelfile.damaged(files.folder, exc))) from None


def _build_model(files, target):
    """The torch model of a model folder already read (modelfile.ModelFiles), once the device (a
    devices.Target; bf16 on it) is known to be usable (DeviceError otherwise, a usage error like a damaged
    model's ModelError)."""
    from zstag.model import load_model

    target.device
    return load_model(files=files)
