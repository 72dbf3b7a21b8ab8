"""Scores of (track, label) pairs, in numpy: the cosine, or the calibrated teacher-or-joint score.

Most models score by the cosine of the track and label embeddings. A model whose config has
``"scores": {"type": "calibrated", ...}`` (the default model) scores each label by one of two paths, both as a
standard score against a reference library of music (the recipe's training tracks):

- **teacher words**: the musicnn taggers name ~70 label words themselves (zstag/teacher.py). The track side of
  the embedding holds each such word's value standardised over the reference library (the raw taggers favour
  "rock" or "piano" for most music); a label that *is* a teacher word, or one of its tag spellings ("singing" →
  vocals), is scored by that value;
- **every other label**: the joint space's cosine, standardised by one affine map shared by all labels (the
  mean and spread of the cosines of the reference tracks with the model's training words), so that among such
  labels the ranking is exactly the cosine's, trained label priors included.

The standard score z is reported as Φ(z) (the normal CDF), a value in (0, 1). For a teacher word it is about
the share of the reference music that scores lower for that word; for another label, the share of all
reference (track, training word) pairs whose cosine is lower. Both sides fold into one linear form: a track is
``[unit(p), t, 1]`` and a label one row, so a score is one dot product per pair.

Why this rule (models/default/EXPERIMENTS.md, "teacher words or the joint space"): per-label z-scores of the
projection lose the trained label priors that seen words need, and a label's nearest teacher words carry little
of a word the taggers do not know; the taggers' own standardised words are far better for the words they name.
"""

from __future__ import annotations

import numpy as np

CALIBRATED = "calibrated"


CALIBRATED_NOTE = ("score: calibrated, 0..1: a standard score against a reference library of music, through the "
                   "normal CDF (one scale for every label; not a probability)")


def note(config: dict, cosine_note: str) -> str:
    """What a score means, for json output."""
    return CALIBRATED_NOTE if is_calibrated(config) else cosine_note


def is_calibrated(config: dict) -> bool:
    scores = config.get("scores")
    return isinstance(scores, dict) and scores.get("type") == CALIBRATED


def joint_dim(config: dict) -> int:
    return int(config.get("embed_dim", 100))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z) in numpy (Abramowitz & Stegun 7.1.26 for erfc, |error| < 1.5e-7): no scipy on the warm path."""
    x = np.abs(np.asarray(z, dtype=np.float64)) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_tail = 0.5 * poly * np.exp(-x * x)
    return np.where(np.asarray(z) >= 0, 1.0 - half_tail, half_tail)


def teacher_spellings(config: dict) -> dict[str, str]:
    """Normalised tag spelling or word → teacher word, from the config's own tag lists."""
    from zstag.teacher import TAG_WORDS
    from zstag.words import normalise_label

    words = set(config["scores"]["teacher_words"])
    table = {w: w for w in words}
    for mapping in TAG_WORDS.values():
        for tag, word in mapping.items():
            if word in words:
                table.setdefault(normalise_label(tag), word)
    return table


def teacher_word(config: dict, label: str, words=None, table: dict[str, str] | None = None) -> str | None:
    """The teacher word a calibrated model scores a label by, None for the joint space: the label itself or a tag
    spelling of it, or else the word its word vector resolves to (words.phrase: "hiphop", "hip hop" → hip-hop,
    "rnb" → r&b), so that a label takes the same path as the word vector it is given."""
    from zstag.words import UnknownLabelError, normalise_label

    if not is_calibrated(config):
        return None
    table = teacher_spellings(config) if table is None else table
    found = table.get(normalise_label(label))
    if found is None and hasattr(words, "phrase"):
        try:
            found = table.get(" ".join(words.phrase(label).words))
        except UnknownLabelError:
            return None
    return found


def teacher_weights(config: dict, words, labels: list[str]) -> np.ndarray:
    """[M, K]: each label's weights over the teacher words: one-hot for the label's teacher_word, all zero for any
    other label (or, with ``k_nearest`` > 0, as experiments/teacher_hybrid.py measures, its k nearest teacher
    words by word-vector cosine, weights ∝ cosine and summing to 1)."""
    spec = config["scores"]
    teacher = list(spec["teacher_words"])
    k = int(spec.get("k_nearest", 0))
    table = teacher_spellings(config)
    index = {w: j for j, w in enumerate(teacher)}
    if k:  # only the k-nearest rule needs every label's similarity to the teacher words
        sims = _unit(np.asarray(words.vectors(labels), np.float64)) @ _unit(np.asarray(words.vectors(teacher), np.float64)).T
    out = np.zeros((len(labels), len(teacher)))
    for m, label in enumerate(labels):
        exact = teacher_word(config, label, words, table)
        if exact is not None:
            out[m, index[exact]] = 1.0
            continue
        if k == 0:  # only teacher words take the teacher path; this label is scored by the joint space alone
            continue
        top = np.argsort(-sims[m], kind="stable")[:k]
        w = np.clip(sims[m, top], 0.0, None)
        out[m, top] = w / w.sum() if w.sum() > 0 else 1.0 / len(top)
    return out


def joint_stats(config: dict) -> tuple[float, float]:
    """(mean, standard deviation) of the reference cosines that put other labels on the standard-score scale;
    ValueError if the config's values are missing, not finite or not a positive spread."""
    spec = config["scores"]
    mean, std = spec.get("joint_mean"), spec.get("joint_std")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (mean, std)) or std <= 0:
        raise ValueError(f"scores.joint_mean / joint_std must be finite numbers, the spread positive (got {mean!r}, {std!r})")
    return float(mean), float(std)


def calibrated_rows(config: dict, joint: np.ndarray, weights: np.ndarray, signs: np.ndarray | None = None) -> np.ndarray:
    """[M, D + K + 1] float32 label rows from the labels' joint embeddings [M, D], teacher weights [M, K]
    (teacher_weights') and signs (-1 for a denial: minus the standard score of what it denies)."""
    mean, std = joint_stats(config)
    joint = np.asarray(joint, np.float64)
    weights = np.asarray(weights, np.float64)
    signs = np.ones(len(joint)) if signs is None else np.asarray(signs, np.float64)
    teacher = weights.sum(axis=1) > 0
    rows = np.zeros((len(joint), joint.shape[1] + weights.shape[1] + 1))
    rows[:, : joint.shape[1]] = np.where(teacher[:, None], 0.0, _unit(joint) / std)
    rows[:, -1] = np.where(teacher, 0.0, -mean / std)
    rows[:, joint.shape[1]:-1] = weights
    rows[:, :-1] *= signs[:, None]
    return rows.astype(np.float32)


def scores(config: dict, track_emb: np.ndarray, label_emb: np.ndarray) -> np.ndarray:
    """float32 [N, M]: the model's scores of N track embeddings against M label embeddings (label_embeddings')."""
    if not is_calibrated(config):
        from zstag.modelfile import cosine_scores

        return cosine_scores(track_emb, label_emb)
    d = joint_dim(config)
    tracks = np.asarray(track_emb, np.float64)
    x = np.concatenate([_unit(tracks[:, :d]), tracks[:, d:], np.ones((len(tracks), 1))], axis=1)
    return normal_cdf(x @ np.asarray(label_emb, np.float64).T).astype(np.float32)


def similarity(config: dict, track_emb: np.ndarray, query_emb: np.ndarray) -> np.ndarray:
    """float32 [N, M]: track-to-track similarity (``zstag similar``): the cosine of the joint-space parts."""
    from zstag.modelfile import cosine_scores

    d = joint_dim(config) if is_calibrated(config) else None
    return cosine_scores(np.asarray(track_emb)[:, :d], np.asarray(query_emb)[:, :d])
