"""Metric functions against values worked out by hand (in the comments), not by calling sklearn again."""

import numpy as np
import pytest

from zstag import metrics


def test_classification_by_hand():
    true = [0, 0, 1, 2, 2]
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # → 0, right
            [0.2, 0.5, 0.3],  # → 1, wrong
            [0.1, 0.7, 0.2],  # → 1, right
            [0.3, 0.3, 0.4],  # → 2, right
            [0.6, 0.1, 0.3],  # → 0, wrong
        ]
    )
    out = metrics.classification(true, scores)
    assert out["n_tracks"] == 5
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert out["recall"] == pytest.approx([1 / 2, 1 / 1, 1 / 2])
    assert out["mean_recall"] == pytest.approx(2 / 3)


def test_classification_class_without_tracks_and_ties():
    # Label 2 has no track: its recall is undefined. A tie goes to the first label.
    out = metrics.classification([0, 1], np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.9]]))
    assert out["accuracy"] == pytest.approx(1 / 2)  # track 0 → 0 (tie, first wins); track 1 → 2
    assert out["recall"][0] == 1.0 and out["recall"][1] == 0.0 and out["recall"][2] is None
    assert out["mean_recall"] == pytest.approx(1 / 2)
    assert out["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_classification_empty():
    out = metrics.classification(np.zeros(0, dtype=int), np.zeros((0, 3)))
    assert out["accuracy"] is None and out["n_tracks"] == 0


# 4 tracks × 3 labels; label 2 has no positive track, track 3 has no true label.
TRUTH = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
SCORES = np.array([[0.9, 0.2, 0.5], [0.8, 0.4, 0.5], [0.3, 0.6, 0.5], [0.1, 0.0, 0.5]])


def test_retrieval_by_hand():
    out = metrics.retrieval(TRUTH, SCORES)
    # label 0: positives 0.9, 0.3 vs negatives 0.8, 0.1 → pairs won 3/4; ranking + − + − → AP (1 + 2/3) / 2 = 5/6
    # label 1: positive 0.4 vs negatives 0.2, 0.6, 0.0 → 2/3; ranking − + → AP 1/2
    # label 2: no positive → skipped
    assert out["per_row"][0] == pytest.approx((3 / 4, 5 / 6))
    assert out["per_row"][1] == pytest.approx((2 / 3, 1 / 2))
    assert out["per_row"][2] is None
    assert out["roc_auc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert out["pr_auc"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert out["n_scored"] == 2 and out["skipped_no_positive"] == 1 and out["skipped_all_positive"] == 0


def test_annotation_by_hand():
    out = metrics.annotation(TRUTH, SCORES)
    # track 0: true 0.9 above 0.2, 0.5 → AUC 1, AP 1
    # track 1: true 0.4 below 0.8, 0.5 → AUC 0, AP 1/3 (third in the ranking)
    # track 2: true 0.3 below 0.6, 0.5 → AUC 0, AP 1/3
    # track 3: no true label → skipped
    assert out["per_row"][:3] == [pytest.approx((1, 1)), pytest.approx((0, 1 / 3)), pytest.approx((0, 1 / 3))]
    assert out["roc_auc"] == pytest.approx(1 / 3)
    assert out["pr_auc"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert out["skipped_no_positive"] == 1 and out["n_scored"] == 3


def test_auc_ties_and_all_positive():
    # Tied positive and negative count half a pair: positives 0.5, 0.7 vs negative 0.5 → (0.5 + 1) / 2.
    out = metrics.annotation(np.array([[1, 0, 1], [1, 1, 1]], dtype=bool), np.array([[0.5, 0.5, 0.7], [0.1, 0.2, 0.3]]))
    assert out["per_row"][0][0] == pytest.approx(3 / 4)
    assert out["per_row"][1] is None and out["skipped_all_positive"] == 1


def test_top_k_by_hand():
    truth = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=bool)
    scores = np.array(
        [
            [0.1, 0.9, 0.8, 0.2, 0.3],  # ranking 1✓ 2 4 3 0✓
            [0.5, 0.4, 0.3, 0.2, 0.1],  # ranking 0 1 2 3 4✓
            [0.5, 0.4, 0.3, 0.2, 0.1],  # no true label: not counted
        ]
    )
    out = metrics.top_k(truth, scores, ks=(1, 2, 3, 5))
    assert out["n_tracks"] == 2
    assert out["hit@1"] == pytest.approx(1 / 2) and out["P@1"] == pytest.approx((1 + 0) / 2)
    assert out["hit@2"] == pytest.approx(1 / 2) and out["P@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert out["hit@3"] == pytest.approx(1 / 2) and out["P@3"] == pytest.approx((1 / 3 + 0) / 2)
    assert out["hit@5"] is None and out["P@5"] is None  # k ≥ 5 labels: every label is in the top k


def test_top_k_ties_keep_label_order():
    # All scores tie: the top 1 is label 0, which is not the true one.
    out = metrics.top_k(np.array([[0, 1, 0]], dtype=bool), np.full((1, 3), 0.5), ks=(1, 2))
    assert out["hit@1"] == 0.0 and out["hit@2"] == 1.0 and out["P@2"] == pytest.approx(1 / 2)
