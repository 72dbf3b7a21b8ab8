"""Eval's transfer report: how far the evaluation corpus is from the model's training corpus. Label overlap
(evaluation labels that are training labels, each one's nearest training label), acoustic conditions
(sample rate, duration, loudness, spectral centroid, mean track embedding: acoustics.corpus_summary against
the model's corpus_stats.json) and provenance warnings (the model trained on the corpus it is evaluated on).
"""

from __future__ import annotations

import numpy as np

from zstag.modelfile import cosine_scores

STATS_FILE = "corpus_stats.json"  # written beside a model by training: acoustics.corpus_summary
NO_STATS_NOTE = f"the model ships no {STATS_FILE}: no training-corpus statistics to compare"


def training_labels_among(labels: list[str], train_labels, words=None) -> list[str]:
    """The labels that are training labels as far as the model can tell: the same word-vector entries
    (words.vocabulary_keys; the normalised spelling without word vectors)."""
    from zstag.words import vocabulary_keys

    known = set(vocabulary_keys(train_labels, words).values())
    keys = vocabulary_keys(labels, words)
    return [label for label in labels if keys[label] in known]


def label_overlap(eval_labels: list[str], train_labels: list[str], words) -> dict:
    """Evaluation labels that are training labels (the same word-vector entries: words.vocabulary_keys), and
    each evaluation label's nearest training label (word cosine)."""
    from zstag.words import UnknownLabelError

    exact = training_labels_among(eval_labels, train_labels, words)
    usable, rows, no_vector = [], [], []
    for label in train_labels:
        try:
            rows.append(words.phrase(label).vector)
            usable.append(label)
        except UnknownLabelError:
            no_vector.append(label)
    nearest: dict[str, dict | None] = {label: None for label in eval_labels}
    if usable and eval_labels:
        sims = cosine_scores(words.vectors(eval_labels), np.stack(rows))
        for label, row in zip(eval_labels, sims):
            best = int(np.argmax(row))  # ties: first in the training vocabulary
            nearest[label] = {"train_label": usable[best], "cosine": float(row[best])}
    return {
        "n_train_labels": len(train_labels),
        "n_eval_labels": len(eval_labels),
        "n_exact": len(exact),
        "exact": exact,
        "train_labels_without_vector": no_vector,
        "nearest": nearest,
    }


def acoustic_transfer(eval_summary: dict, train_summary: dict | None, note: str | None = None) -> dict:
    """The two corpora's acoustic distributions side by side, and the cosine of their mean embeddings."""
    from zstag.acoustics import STAT_FIELDS

    train_acoustics = (train_summary or {}).get("acoustics")
    train_acoustics = train_acoustics if isinstance(train_acoustics, dict) else {}
    fields = {
        field: {"train": _field_summary(train_acoustics.get(field)), "eval": eval_summary["acoustics"].get(field)}
        for field in STAT_FIELDS
    }
    cosine = None
    train_mean = _mean_embedding((train_summary or {}).get("mean_embedding"))
    eval_mean = np.asarray(eval_summary.get("mean_embedding") or [], dtype=np.float64)
    if train_mean.size and train_mean.shape == eval_mean.shape:
        cosine = float(cosine_scores(eval_mean[None], train_mean[None])[0, 0])
    elif train_mean.size:
        note = note or f"mean embeddings differ in size ({train_mean.size} vs {eval_mean.size}): no cosine"
    return {
        "train_corpus": (train_summary or {}).get("corpus"),
        "train_tracks": (train_summary or {}).get("n_tracks"),
        "eval_corpus": eval_summary["corpus"],
        "eval_tracks": eval_summary["n_tracks"],
        "fields": fields,
        "mean_embedding_cosine": cosine,
        "note": note if train_summary is not None else (note or NO_STATS_NOTE),
    }


def _field_summary(value) -> dict | None:
    """A training corpus's field summary as zstag writes it (median, q25, q75: numbers), else None: the file may
    be written by hand, and a field that is not comparable must not stop an evaluation whose tracks are embedded."""
    numbers = isinstance(value, dict) and all(
        isinstance(value.get(key), (int, float)) and not isinstance(value.get(key), bool) for key in ("median", "q25", "q75"))
    return value if numbers else None


def _mean_embedding(value) -> np.ndarray:
    """float64 [D]; empty (no cosine) when a hand-written file's mean_embedding is not a list of numbers."""
    try:
        mean = np.asarray(value or [], dtype=np.float64)
    except (TypeError, ValueError):
        return np.zeros(0)
    return mean if mean.ndim == 1 else np.zeros(0)


def provenance_warnings(config: dict, train_summary: dict | None, corpus, split) -> list[str]:
    """Why the figures may not measure transfer to this corpus: the model learnt from it (corpus_stats.json's
    "label_sources": the shipped models' backbones and teacher taggers were trained on MSD and MTAT), or it was
    trained on a corpus of the same name (config "training": "corpus", as `zstag train` records it, and "sets",
    the sets recipes/build_default_model.py trained on) and no --split of that training holds its tracks out.
    Names are compared case-blind: a folder's name is the corpus name, and file systems may fold case."""
    warnings = []
    for source in label_sources(train_summary):
        if str(source.get("corpus")).casefold() == corpus.kind:
            via = f" ({source['via']})" if source.get("via") else ""
            warnings.append(f"not zero-shot transfer: the model learnt from {corpus.kind} itself{via}; "
                            "compare its figures only with those of models that did too")
    training = config.get("training")
    training = training if isinstance(training, dict) else {}
    name = str(corpus.name).casefold()
    trained_on = training.get("corpus")
    if split is None and isinstance(trained_on, str) and trained_on.casefold() == name:
        warnings.append(f"the model was trained on a corpus named {trained_on!r}, as this one is: its training tracks "
                        "are among those evaluated; pass its split (--split split.json) for held-out figures")
    sets = training.get("sets")
    same = [s for s in sets if isinstance(s, str) and s.casefold() == name] if isinstance(sets, list) else []
    held_out = split is not None and split.sha256 == config.get("split_sha256")
    if same and not held_out:
        warnings.append(f"the model was trained on a set named {same[0]!r} (one of its {len(sets)} training sets), as "
                        "this corpus is: its tracks are likely among those evaluated, so these figures are not "
                        "zero-shot transfer")
    return warnings


def label_sources(train_summary: dict | None) -> list[dict]:
    """corpus_stats.json's "label_sources" ({"corpus", "via"} objects; one alone counts as a list of one). A
    hand-written file with anything else gives none: it must not stop an evaluation whose tracks are embedded."""
    sources = (train_summary or {}).get("label_sources")
    sources = [sources] if isinstance(sources, dict) else sources
    return [source for source in sources if isinstance(source, dict)] if isinstance(sources, list) else []


def training_stats(model) -> tuple[dict | None, str | None]:
    """(corpus_stats.json of the model or None, a note saying why it is missing or unusable)."""
    from zstag.model import read_model_file

    try:
        stats = read_model_file(model, STATS_FILE)
    except (OSError, ValueError) as exc:
        return None, f"{STATS_FILE} of the model is unreadable ({' '.join(str(exc).split())})"
    if stats is None:
        return None, NO_STATS_NOTE
    if not isinstance(stats, dict):
        return None, f"{STATS_FILE} of the model is not a JSON object: not compared"
    if not isinstance(stats.get("acoustics"), dict):  # kept: its label_sources still count (provenance_warnings)
        return stats, f"{STATS_FILE} of the model has no acoustics: not compared"
    return stats, None
