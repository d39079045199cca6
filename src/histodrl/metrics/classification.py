"""Classification metrics for the PCam evaluations: accuracy, binary ROC AUC, confusion matrix."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _check_labels(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {values.shape}")
    if values.dtype != np.bool_ and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {values.dtype}")
    if values.size and values.min() < 0:
        raise ValueError(f"{name}: class labels must be >= 0, found {values.min()}")
    return values.astype(np.int64)


def _check_same_length(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[0]} has {a.shape[0]} entries but {names[1]} has {b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError(f"{names[0]}: expected at least one sample")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the true class.

    Args:
        y_true: True class labels, integers >= 0. Shape: (N,).
        y_pred: Predicted class labels. Shape: (N,).

    Returns:
        Accuracy in [0, 1].
    """
    y_true = _check_labels("y_true", y_true)
    y_pred = _check_labels("y_pred", y_pred)
    _check_same_length(y_true, y_pred, ("y_true", "y_pred"))
    return float(np.mean(y_true == y_pred))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of a binary classifier, from ranks (Mann-Whitney U).

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the ranks of
    the positive samples' scores among all scores. Tied scores get the average of their ranks, so a
    positive-negative pair with equal scores counts 1/2, which is the area under the ROC curve drawn
    with straight segments through tied thresholds (as ``sklearn.metrics.roc_auc_score``).

    Args:
        y_true: Binary labels, 0/1 or bool; 1 is the positive class. Shape: (N,).
        scores: Scores or probabilities, higher = more positive, finite. Shape: (N,).

    Returns:
        AUC in [0, 1].

    Raises:
        ValueError: if only one class is present (the AUC is undefined), or on non-finite scores.
    """
    y_true = _check_labels("y_true", y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores: expected a 1-D array, got shape {scores.shape}")
    _check_same_length(y_true, scores, ("y_true", "scores"))
    if y_true.max() > 1:
        raise ValueError(f"y_true: expected binary labels 0/1, found {y_true.max()}")
    if not np.isfinite(scores).all():
        raise ValueError("scores: expected finite values, found NaN or inf")
    positive = y_true == 1
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("y_true: ROC AUC needs both classes, found only one")
    ranks = rankdata(scores, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None
) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        y_true: True class labels, integers >= 0. Shape: (N,).
        y_pred: Predicted class labels. Shape: (N,).
        n_classes: Number of classes; default ``max(y_true, y_pred) + 1``.

    Returns:
        ``C[t, p]`` = number of samples of true class t predicted as p, int64.
        Shape: (n_classes, n_classes).
    """
    y_true = _check_labels("y_true", y_true)
    y_pred = _check_labels("y_pred", y_pred)
    _check_same_length(y_true, y_pred, ("y_true", "y_pred"))
    top = int(max(y_true.max(), y_pred.max())) + 1
    if n_classes is None:
        n_classes = top
    elif n_classes < top:
        raise ValueError(f"n_classes={n_classes}: labels go up to {top - 1}")
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)
