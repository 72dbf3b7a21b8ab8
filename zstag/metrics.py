"""Evaluation metrics for zero-shot classification and tagging, on score matrices.

Every function takes ``scores`` [N tracks, M labels] (higher = more likely) and the truth for the same
tracks and labels, and returns plain Python numbers (JSON-ready; ``None`` where a figure is undefined).

- Classification (single-label corpora): accuracy of the argmax over the candidate labels, per-class
  recall, confusion matrix (rows = true label, columns = predicted label).
- Tagging (multi-label corpora), as in Choi et al. (ISMIR 2019): *retrieval* ranks the tracks for each
  label (ROC-AUC and PR-AUC per label, macro-averaged over labels); *annotation* ranks the labels for each
  track (ROC-AUC and average precision per track, averaged over tracks); hit@k and P@k on the annotation
  ranking. PR-AUC is scikit-learn's average precision (the step-wise area under the PR curve).

A ranking needs at least one positive and one negative to have an AUC, so a label (retrieval) or a track
(annotation) with no positive, or with nothing but positives, is skipped and counted, never scored.
Ties in top-k rankings are broken by label order (stable sort), so results are deterministic.
"""

from __future__ import annotations

import numpy as np

TOP_K = (1, 5, 10)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def classification(true_index: np.ndarray, scores: np.ndarray) -> dict:
    """Single-label metrics: argmax accuracy, per-class recall, confusion matrix.

    true_index: int [N], the column of each track's label in scores [N, M].
    Returns accuracy (fraction of tracks whose argmax is their label), recall per class (None for a
    class with no track), mean_recall (over classes with tracks; balanced accuracy) and confusion
    ([M][M] counts, row = true label, column = predicted label).
    """
    true_index = np.asarray(true_index, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n_labels = scores.shape[1]
    if len(true_index) == 0 or n_labels == 0:
        return {"n_tracks": 0, "accuracy": None, "recall": [None] * n_labels, "mean_recall": None,
                "confusion": [[0] * n_labels for _ in range(n_labels)]}
    predicted = scores.argmax(axis=1)  # first maximum on ties
    confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(confusion, (true_index, predicted), 1)
    support = confusion.sum(axis=1)
    recall = [float(confusion[i, i] / support[i]) if support[i] else None for i in range(n_labels)]
    return {
        "n_tracks": int(len(true_index)),
        "accuracy": float(np.mean(predicted == true_index)),
        "recall": recall,
        "mean_recall": _mean(recall),
        "confusion": confusion.astype(int).tolist(),
    }


def ranking_aucs(truth: np.ndarray, scores: np.ndarray) -> dict:
    """ROC-AUC and average precision of each row's ranking of its columns.

    truth: bool [R, C]; scores: [R, C]. A row with no positive, or with only positives, gets None and is
    counted in skipped_no_positive / skipped_all_positive. roc_auc and pr_auc are the means over the
    scored rows; per_row holds each row's (roc_auc, pr_auc).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    per_row: list[tuple[float, float] | None] = []
    no_positive = all_positive = 0
    for row_truth, row_scores in zip(truth, scores):
        positives = int(row_truth.sum())
        if positives == 0:
            no_positive += 1
            per_row.append(None)
        elif positives == len(row_truth):
            all_positive += 1
            per_row.append(None)
        else:
            per_row.append(
                (float(roc_auc_score(row_truth, row_scores)), float(average_precision_score(row_truth, row_scores)))
            )
    scored = [r for r in per_row if r is not None]
    return {
        "roc_auc": _mean(r[0] for r in scored),
        "pr_auc": _mean(r[1] for r in scored),
        "n_scored": len(scored),
        "skipped_no_positive": no_positive,
        "skipped_all_positive": all_positive,
        "per_row": per_row,
    }


def retrieval(truth: np.ndarray, scores: np.ndarray) -> dict:
    """Per-label ranking of the tracks (label as a query): ROC-AUC and PR-AUC, macro-averaged over labels."""
    return ranking_aucs(np.asarray(truth).T, np.asarray(scores).T)


def annotation(truth: np.ndarray, scores: np.ndarray) -> dict:
    """Per-track ranking of the labels (tagging a track): ROC-AUC and average precision, averaged over tracks."""
    return ranking_aucs(truth, scores)


def top_k(truth: np.ndarray, scores: np.ndarray, ks=TOP_K) -> dict:
    """hit@k and P@k of each track's label ranking, over the tracks with at least one true label.

    hit@k: the fraction of tracks with at least one true label among their k best-scored labels.
    P@k: the mean over tracks of (true labels among the k best-scored) / k.
    A k that is not below the number of labels M makes both trivial (every label is in the top k), so
    those figures are None. Returns {"hit@k": ..., "P@k": ..., "n_tracks": tracks counted}.
    """
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    keep = truth.any(axis=1)
    truth, scores = truth[keep], scores[keep]
    n_labels = truth.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")  # best first; ties keep label order
    ranked_truth = np.take_along_axis(truth, order, axis=1)
    out: dict = {"n_tracks": int(keep.sum())}
    for k in ks:
        if k >= n_labels or len(truth) == 0:
            out[f"hit@{k}"] = out[f"P@{k}"] = None
            continue
        hits = ranked_truth[:, :k].sum(axis=1)
        out[f"hit@{k}"] = float(np.mean(hits > 0))
        out[f"P@{k}"] = float(np.mean(hits / k))
    return out


def set_figures(truth: np.ndarray, scores: np.ndarray, labels: list[str], subset: list[str], single_label: bool) -> dict:
    """The figures of one label set; truth bool [N, M] and scores [N, M] are over `labels`."""
    columns = [labels.index(label) for label in subset]
    t, s = truth[:, columns], scores[:, columns]
    if single_label:
        rows = t.any(axis=1)  # tracks whose (one) label is in the set
        true_index = t[rows].argmax(axis=1) if subset else np.zeros(0, dtype=np.int64)
        out = classification(true_index, s[rows])
        counts = t[rows].sum(axis=0)
        return {
            "n_labels": len(subset),
            "n_tracks": out["n_tracks"],
            "accuracy": out["accuracy"],
            "mean_recall": out["mean_recall"],
            "per_label": {label: {"n_tracks": int(n), "recall": r} for label, n, r in zip(subset, counts, out["recall"])},
            "confusion": {"labels": list(subset), "matrix": out["confusion"]},
        }
    if not subset:  # e.g. no unseen label: nothing to rank, rather than every track "skipped"
        t = s = np.zeros((0, 0))
    ranked_tracks = retrieval(t, s)
    ranked_labels = annotation(t, s)
    per_label = {
        label: {"n_positive": int(n), "roc_auc": r[0] if r else None, "pr_auc": r[1] if r else None}
        for label, n, r in zip(subset, t.sum(axis=0), ranked_tracks["per_row"])
    }
    return {
        "n_labels": len(subset),
        "n_tracks": int(len(t)),
        "retrieval": {
            "roc_auc": ranked_tracks["roc_auc"],
            "pr_auc": ranked_tracks["pr_auc"],
            "n_labels_scored": ranked_tracks["n_scored"],
            "skipped_no_positive": ranked_tracks["skipped_no_positive"],
            "skipped_all_positive": ranked_tracks["skipped_all_positive"],
        },
        "annotation": {
            "roc_auc": ranked_labels["roc_auc"],
            "average_precision": ranked_labels["pr_auc"],
            "n_tracks_scored": ranked_labels["n_scored"],
            "skipped_no_positive": ranked_labels["skipped_no_positive"],
            "skipped_all_positive": ranked_labels["skipped_all_positive"],
        },
        "top_k": top_k(t, s),
        "per_label": per_label,
    }
