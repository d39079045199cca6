"""Classification metrics against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as sk

from histodrl.metrics.classification import accuracy, confusion_matrix, roc_auc


def test_roc_auc_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, size=n)
        y[0], y[1] = 0, 1
        # Rounded scores create many ties on half of the trials.
        scores = rng.normal(size=n) + y * rng.uniform(0, 2)
        if trial % 2:
            scores = np.round(scores, 0)
        assert roc_auc(y, scores) == pytest.approx(sk.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_counts_a_tied_pair_as_one_half():
    # One positive and one negative with equal scores: AUC = 1/2 by the Mann-Whitney definition.
    assert roc_auc(np.array([0, 1]), np.array([0.3, 0.3])) == 0.5
    assert roc_auc(np.array([True, False, True]), np.array([0.9, 0.1, 0.5])) == 1.0


def test_roc_auc_rejects_one_class_and_non_finite_scores():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match="finite"):
        roc_auc(np.array([0, 1]), np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match="binary"):
        roc_auc(np.array([0, 2]), np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match="2 entries"):
        roc_auc(np.array([0, 1]), np.array([0.2, 0.4, 0.5]))


def test_accuracy_and_confusion_matrix_match_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, size=50)
    y_pred = rng.integers(0, 3, size=50)
    assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred), sk.confusion_matrix(y_true, y_pred)
    )


def test_confusion_matrix_rows_are_true_classes_and_n_classes_pads():
    matrix = confusion_matrix(np.array([0, 0, 1]), np.array([1, 0, 1]), n_classes=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="n_classes=1"):
        confusion_matrix(np.array([0, 1]), np.array([0, 1]), n_classes=1)


def test_empty_or_float_labels_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        accuracy(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(ValueError, match="integer"):
        accuracy(np.array([0.5]), np.array([1]))
