"""`zstag eval`: zero-shot classification and tagging figures on a labelled corpus, and a transfer report.

Which tracks and labels
-----------------------
Without --split, every track of the corpus is evaluated over the corpus's labels (or the --labels
subset). A label is *seen* when it resolves to the same word-vector entries as a label of the model's
training vocabulary (``model.train_labels``; "hip hop", "Hip-Hop" and "hiphop" are all "hip-hop", see
``words.WordVectors.phrase``), *unseen* otherwise; *all* is both (generalised zero-shot).
If the corpus is the one the model was trained on, the seen-label figures then include training tracks:
use --split for held-out figures.

With --split FILE (the JSON the training run used), the corpus is read with the split's labels, seen
and unseen are the split's X and Y, and the evaluated tracks are the split's **test partition**: groups
B (seen and unseen labels) and C (unseen labels only), the paper's zero-shot test tracks, plus any
group-A tracks the split held out for testing (its test_fraction; the artist split holds some out).

Figures (see zstag.metrics for the definitions)
-----------------------------------------------
Single-label corpora: for each label set, the tracks whose label is in the set, classified by the argmax
over the set's labels: accuracy, per-class recall, confusion matrix. "unseen" is the zero-shot task
among unseen labels only; "all" the generalised one, where seen labels compete.
Multi-label corpora: for each label set, every evaluated track with the set's labels: retrieval ROC-AUC
and PR-AUC per label (macro), annotation ROC-AUC and average precision per track, hit@k and P@k
(None when k is not below the set's number of labels: every label would be in the top k).
Labels without a word vector cannot be scored: they are listed and left out (for single-label corpora
with their tracks). A label whose word is likely a typo of a music word ("jaz") is noted (labels.likely_typos:
zstag.spelling). A file that cannot be decoded is listed and left out; the run goes on. Entries the
corpus reader left out (audio not found, malformed rows, files listed twice) are counted in the report's
"corpus", with the first one's cause. "warnings" reports a single-label set with one label (accuracy
trivially 1.0), a corpus the model learnt from (``provenance_warnings``: the shipped models on MSD or
MTAT), and a corpus named as the one a model was trained on, evaluated without --split.

Transfer report: the evaluation labels against the model's training vocabulary (exact matches: the same
word vectors; nearest training label by word-vector cosine), and the evaluation corpus's acoustic
statistics beside those of the training corpus, when the model ships them (``corpus_stats.json``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from zstag.metrics import set_figures
from zstag.modelfile import label_embeddings, scored_as
from zstag.paths import atomic_write, valid_text
from zstag.transfer import (NO_STATS_NOTE, STATS_FILE, acoustic_transfer, label_overlap,  # noqa: F401
                            provenance_warnings, training_labels_among, training_stats)  # (NO_STATS_NOTE: re-exported)
from zstag.errors import UsageError, ZstagError

REPORT_FORMAT = "zstag-eval/1"
SETS = ("seen", "unseen", "all")
TOP_N_KINDS = ("mtat", "msd", "csv")  # readers with a top_n option



class EvalError(ZstagError):
    """Bad options or inputs for `zstag eval`; str(e) is one line."""


class EvalUsageError(EvalError, UsageError):
    """Option values or combinations that cannot work, whatever the data (the CLI exits 2)."""


@dataclass
class Evaluation:
    report: dict  # JSON-ready and deterministic: every figure, the model, corpus, split and label lists
    cached: int  # tracks whose embedding came from the cache (run-dependent, so not in the report)


# --- labels -------------------------------------------------------------------------------------


def choose_labels(available: list[str], requested: list[str] | None) -> list[str]:
    """The requested labels (matched after normalisation, in the order of `available`), or all of them."""
    from zstag.labels import normalise_label

    if not requested:
        return list(available)
    by_norm = {}
    for label in available:
        by_norm.setdefault(normalise_label(label), label)
    wanted = {normalise_label(label): label for label in requested}
    unknown = [label for norm, label in wanted.items() if norm not in by_norm]
    if unknown:
        close = difflib.get_close_matches(unknown[0], available, n=3)
        hint = f" (nearest: {', '.join(close)})" if close else ""
        raise EvalUsageError(f"--labels: not evaluation labels of this corpus: {', '.join(unknown)}{hint}")
    chosen = {by_norm[norm] for norm in wanted}
    return [label for label in available if label in chosen]


def label_sets(labels: list[str], train_labels=(), split=None, words=None) -> dict[str, list[str]]:
    """{"seen", "unseen", "all"}: from the split's X / Y when given, else from the training vocabulary
    (a label is seen when it is a training label as far as the model can tell: training_labels_among)."""
    if split is not None:
        seen_set = set(split.seen)
        seen = [label for label in labels if label in seen_set]
    else:
        seen = training_labels_among(labels, train_labels, words)
    seen_set = set(seen)
    unseen = [label for label in labels if label not in seen_set]
    return {"seen": seen, "unseen": unseen, "all": list(labels)}


# --- figures ------------------------------------------------------------------------------------


def all_figures(truth, scores, labels, sets: dict[str, list[str]], single_label: bool) -> dict:
    return {name: set_figures(truth, scores, labels, sets[name], single_label) for name in SETS}


def trivial_sets(figures: dict) -> list[str]:
    """One warning per classification label set of one label with tracks: its argmax cannot be wrong."""
    one = {name: f["confusion"]["labels"][0] for name, f in figures.items() if f["n_labels"] == 1 and f["n_tracks"]}
    if "all" in one:
        return [f"only one evaluation label ({one['all']}): accuracy is trivially 1.0"]
    return [f"only one {name} label ({one[name]}): the {name} accuracy is trivially 1.0" for name in SETS if name in one]


def check_outputs(outputs: dict, corpus, model_folder, vectors, split) -> None:
    """EvalUsageError when an output (option → path) would replace one of the run's inputs
    (paths.check_output): a file the corpus reader read (the manifest, annotations), the corpus root,
    an audio file, the split, the word vectors or the model's files. A new report beside them is fine."""
    from pathlib import Path

    from zstag.corpora import corpus_inputs
    from zstag.modelfile import CONFIG_FILE, WEIGHTS_FILE
    from zstag.paths import Input, OutputError, check_output

    named = (("the split file", split), ("the word-vector file", vectors))
    inputs = corpus_inputs(corpus) + [Input(what, path) for what, path in named if path is not None]
    if model_folder is not None:
        inputs += [Input("the model file", Path(model_folder) / name)
                   for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE)]
    try:
        for option, path in outputs.items():
            if path is not None:
                check_output(path, option, inputs)
    except OutputError as exc:
        raise EvalUsageError(str(exc)) from None


# --- the run ------------------------------------------------------------------------------------


def evaluate(
    kind: str,
    root: str | os.PathLike,
    *,
    model: str = "default",
    split: str | os.PathLike | None = None,
    labels: list[str] | None = None,
    top_n: int | None = None,
    vectors: str | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    max_seconds: float | None = None,
    progress=None,
    device="cpu",
    bf16: bool = False,
    outputs: dict | None = None,
    notice=None,
) -> Evaluation:
    """Evaluate a model on a corpus; see the module docstring. progress, device, bf16, notice: as
    embeddings.embed_files (bf16 is recorded in the report's model.bf16: its figures are of bfloat16
    embeddings). outputs: option → path the caller
    will write (--out, --plot), refused as check_outputs says once the corpus is read, before any decoding.

    Raises EvalError, CorpusError, SplitError, ModelError, VectorsError or DeviceError (all one line): bad options and
    inputs before any audio is decoded, and EvalError when no track at all could be decoded.
    """
    from zstag.acoustics import corpus_summary
    from zstag.audio import check_span
    from zstag.corpora import open_corpus
    from zstag.embeddings import embed_files
    from zstag.model import load_model
    from zstag.spelling import typo_note
    from zstag.splits import check_split, load_split
    from zstag.words import UnknownLabelError, VectorsError, load_words

    from zstag.devices import target_of

    try:
        check_span(0.0, max_seconds)
    except ValueError as exc:
        raise EvalUsageError(f"--max-seconds: {exc}") from None
    target = target_of(device, bf16)
    net = load_model(model)
    try:
        words = load_words(net, vectors)
    except VectorsError as exc:
        raise EvalUsageError(str(exc)) from None
    the_split = load_split(split) if split is not None else None

    options: dict = {}
    if the_split is not None:
        if top_n is not None:
            raise EvalUsageError("--top-n does not apply with --split: the split names the labels")
        options["vocabulary"] = the_split.labels
    elif top_n is not None:
        if kind not in TOP_N_KINDS:
            raise EvalUsageError(f"--top-n applies to {', '.join(TOP_N_KINDS)} corpora, not {kind}")
        options["top_n"] = top_n
    corpus = open_corpus(kind, root, **options)
    check_outputs(outputs or {}, corpus, getattr(net, "folder", None), vectors, split)

    if the_split is not None:
        check_split(the_split, corpus)
        have = {t.id for t in corpus.tracks}
        test_ids = the_split.tracks("test")
        tracks = [corpus.track(i) for i in test_ids if i in have]
        split_info = {
            "path": str(split),
            "sha256": the_split.sha256,
            "corpus": the_split.corpus,
            "method": the_split.method,
            "seed": the_split.seed,
            "partition": "test",
            "tracks_in_partition": len(test_ids),
            "tracks_missing_from_corpus": len(test_ids) - len(tracks),
            "groups": {g: sum(the_split.group_of(t.id) == g for t in tracks) for g in ("A", "B", "C")},
            "matches_model": (the_split.sha256 == net.config["split_sha256"]) if net.config.get("split_sha256") else None,
        }
        base_labels = [label for label in corpus.labels if label in set(the_split.labels)]
    else:
        tracks, split_info, base_labels = list(corpus.tracks), None, list(corpus.labels)

    candidates = choose_labels(base_labels, labels)
    eval_labels, no_vector = [], {}
    for label in candidates:
        try:
            words.phrase(label)
            eval_labels.append(label)
        except UnknownLabelError as exc:
            no_vector[label] = str(exc)
    if not eval_labels:
        raise EvalError(f"{root}: none of the {len(candidates)} evaluation labels has a word vector in {words.source}")
    if corpus.single_label:  # a track is scored only against candidates that include its label
        keep = set(eval_labels)
        tracks = [t for t in tracks if keep & set(t.labels)]
    if not tracks:
        raise EvalError(f"{root}: no track to evaluate" + (" in the split's test partition" if the_split else ""))

    results = embed_files(net, [t.path for t in tracks], workers=workers, use_cache=use_cache,
                          max_seconds=max_seconds, progress=progress, device=target, notice=notice)
    good = [(t, r) for t, r in zip(tracks, results) if r.ok]
    failed = [{"id": t.id, "error": r.error} for t, r in zip(tracks, results) if not r.ok]
    if not good:
        raise EvalError(f"none of the {len(tracks)} tracks could be decoded; first error: {failed[0]['error']}")

    label_index = {label: j for j, label in enumerate(eval_labels)}
    truth = np.zeros((len(good), len(eval_labels)), dtype=bool)
    for i, (track, _) in enumerate(good):
        for label in track.labels:
            if label in label_index:
                truth[i, label_index[label]] = True
    scores = net.scores(np.stack([r.embedding for _, r in good]), label_embeddings(net, words, eval_labels))
    sets = label_sets(eval_labels, net.train_labels, the_split, words)

    figures = all_figures(truth, scores, eval_labels, sets, corpus.single_label)
    train_summary, note = training_stats(net)
    eval_summary = corpus_summary(corpus.name, [r for _, r in good])
    report = {
        "format": REPORT_FORMAT,
        "model": {
            "id": net.model_id,
            "name": net.config.get("name"),
            "path": str(getattr(net, "folder", model)),
            "words": words.source,
            "split_sha256": net.config.get("split_sha256"),
            "train_labels": net.train_labels,
            "bf16": target.bf16,
        },
        "corpus": {
            "kind": corpus.kind,
            "name": corpus.name,
            "root": str(root),
            "n_tracks": len(corpus.tracks),
            "n_missing": len(corpus.missing),
            "n_skipped": len(corpus.skipped),
            "left_out": corpus.left_out(),
            "single_label": corpus.single_label,
            "options": options,
        },
        "split": split_info,
        "task": "classification" if corpus.single_label else "tagging",
        "seen_from": "split" if the_split is not None else "model.train_labels",
        "options": {"labels": labels or None, "top_n": top_n, "max_seconds": max_seconds},
        "labels": {**sets, "without_vector": no_vector,
                   "likely_typos": [note for note in (typo_note(words, label) for label in eval_labels) if note],
                   "scored_as": {label: f"{'-' if sign < 0 else ''}{what}"  # "no vocals": "-vocals"
                                 for label, (sign, what) in scored_as(net, words, eval_labels).items()}},
        "tracks": {"selected": len(tracks), "evaluated": len(good), "failed": failed},
        "warnings": provenance_warnings(net.config, train_summary, corpus, the_split)
                    + (trivial_sets(figures) if corpus.single_label else []),
        "metrics": figures,
        "transfer": {
            "label_overlap": label_overlap(eval_labels, net.train_labels, words),
            "acoustics": acoustic_transfer(eval_summary, train_summary, note),
        },
    }
    return Evaluation(report=_json_ready(report), cached=sum(r.cached for _, r in good))


def _json_ready(value):
    """NaN/inf → None, numpy scalars → Python and file names' bytes that are not UTF-8 → U+FFFD
    (paths.valid_text), so the report is strict JSON in valid UTF-8."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_text(str(k)): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- output -------------------------------------------------------------------------------------


def write_report(report: dict, path: str | os.PathLike) -> None:
    """The report as JSON (strict, 2-space indent), written atomically."""
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8"), follow_links=True)  # a user's file: a link's target is replaced
