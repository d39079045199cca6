"""Evaluation metrics: GLaS object-level F1 / Dice / Hausdorff and classification metrics.

Pure numpy/scipy (no torch): everything here works on arrays. :mod:`.label_files` is the one module
that reads files, for ``histodrl glas-metrics``.
"""

from histodrl.metrics.classification import accuracy, confusion_matrix, roc_auc
from histodrl.metrics.glas import (
    ImageTerms,
    aggregate_terms,
    glas_metrics,
    glas_metrics_by_part,
    glas_part,
    hausdorff_distance,
    image_terms,
    object_dice,
    object_f1,
    object_hausdorff,
)
from histodrl.metrics.instances import instances_from_mask

__all__ = [
    "ImageTerms",
    "accuracy",
    "aggregate_terms",
    "confusion_matrix",
    "glas_metrics",
    "glas_metrics_by_part",
    "glas_part",
    "hausdorff_distance",
    "image_terms",
    "instances_from_mask",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "roc_auc",
]
