"""GLaS object-level metrics: object F1, object Dice and object Hausdorff.

Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS challenge contest",
Medical Image Analysis 35:489-502, 2017 (https://arxiv.org/abs/1603.00275), with the semantics of the
challenge's official MATLAB code (``F1score.m``, ``ObjectDice.m``, ``ObjectHausdorff.m``; see
``DATASETS_AND_METRICS.md`` §1 of the design notes).

Inputs are instance label maps: 0 is background and every other value is one object. Labels are used
as given and never relabelled (a binary mask must first go through :func:`instances_from_mask`).

Matching, shared by all three metrics: the *partner* of an object is the object on the other side
with the largest pixel overlap, background excluded, ties going to the smallest label. An object that
overlaps nothing on the other side has no partner.

Notation for one image: S_i are the segmented (predicted) objects with partners G_i, G~_j the ground
truth objects with partners S~_j, and

    F1      = 2 TP / (2 TP + FP + FN)                                   (= 2PR / (P + R))
    Dice    = 1/2 [ sum_i w_i Dice(G_i, S_i) + sum_j w~_j Dice(G~_j, S~_j) ]
    H       = 1/2 [ sum_i w_i H(G_i, S_i)    + sum_j w~_j H(G~_j, S~_j) ]
    w_i = |S_i| / sum_m |S_m|,   w~_j = |G~_j| / sum_n |G~_n|

with H the symmetric Hausdorff distance over all object pixels (Euclidean, in pixels). A segmented
object is a true positive when it has a partner and covers strictly more than 50% of the partner's
area; FP = n_S - TP and FN = n_G - TP. An object without a partner gets Dice 0 and, for Hausdorff, its
smallest Hausdorff distance to any object on the other side of the same image.

Edge cases (per image; :func:`glas_metrics` applies the same rules to a whole set):

* no objects on either side: F1 = 1, Dice = 1, Hausdorff = 0 (as the MATLAB code);
* objects on one side only: F1 = 0, Dice = 0, and Hausdorff = the penalty chosen by
  ``empty_hausdorff``: ``"diagonal"`` (default) is the image diagonal ``sqrt(H^2 + W^2)``, which is
  larger than any Hausdorff distance within the image; ``"inf"`` gives ``inf``. The MATLAB code
  crashes here;
* both sides non-empty but TP = 0: F1 = 0 (MATLAB gives NaN from 0/0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AGGREGATES = ("pooled", "mean")
F1_FN_MODES = ("numG_minus_TP", "setdiff")
TP_RULES = (">", ">=")
EMPTY_HAUSDORFF = ("diagonal", "inf")
PARTS = ("testA", "testB", "other")

_PART_PATTERN = re.compile(r"^(testA|testB)_")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")


def _check_label_map(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label map, got shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name}: expected integer instance labels, got dtype {labels.dtype} "
            "(turn a binary or probability mask into labels with instances_from_mask)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), found {labels.min()}")
    if labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: label {labels.max()} does not fit in int64")
    return labels.astype(np.int64, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = _check_label_map("pred", pred)
    gt = _check_label_map("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    return pred, gt


# ---------------------------------------------------------------------------------------------
# Hausdorff distance
# ---------------------------------------------------------------------------------------------


def hausdorff_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance between the pixel sets of two masks, in pixels.

    ``H(A, B) = max( max_{x in A} min_{y in B} |x - y|, max_{y in B} min_{x in A} |x - y| )`` over
    all foreground pixels (not only boundaries), Euclidean. Computed with exact Euclidean distance
    transforms on the union bounding box of the two masks, which equals the all-pairs definition
    (every nearest pixel lies inside that box).

    Args:
        a: Boolean mask. Shape: (H, W).
        b: Boolean mask. Shape: (H, W).

    Returns:
        The distance; 0.0 when both masks are empty and ``inf`` when exactly one is (as the GLaS
        MATLAB ``Hausdorff``).
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"a shape {a.shape} != b shape {b.shape}")
    a_any, b_any = bool(a.any()), bool(b.any())
    if not a_any and not b_any:
        return 0.0
    if not a_any or not b_any:
        return math.inf
    box = _bounding_box(a | b)
    return _cropped_hausdorff(a[box], b[box])


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _cropped_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    # distance_transform_edt(~b) is, at every pixel, the distance to the nearest pixel of b.
    a_to_b = ndimage.distance_transform_edt(~b)[a].max()
    b_to_a = ndimage.distance_transform_edt(~a)[b].max()
    return float(max(a_to_b, b_to_a))


# ---------------------------------------------------------------------------------------------
# Per-image matching and the sums every metric is built from
# ---------------------------------------------------------------------------------------------


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the object labels to 1..n in increasing label order (0 stays 0); return (map, n)."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        # A lookup table is linear in the image size; a sort (np.unique) is not.
        present = np.flatnonzero(np.bincount(flat, minlength=top + 1))
        present = present[present != 0]
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[present] = np.arange(1, present.size + 1)
        return lut[labels], int(present.size)
    values, inverse = np.unique(flat, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int64), int(np.count_nonzero(values))


def _partners(overlap: np.ndarray) -> np.ndarray:
    """Partner (1-based column) of every row of an object-overlap matrix; 0 = no partner."""
    if overlap.shape[1] == 0:
        return np.zeros(overlap.shape[0], dtype=np.int64)
    # argmax takes the first maximum, i.e. the smallest label; 0 overlap means no partner.
    best = overlap.argmax(axis=1)
    return np.where(overlap[np.arange(overlap.shape[0]), best] > 0, best + 1, 0)


@dataclass(frozen=True)
class ImageTerms:
    """The per-image sums that the object metrics are made of; sums of these pool a set.

    Attributes:
        tp, fp, fn: Detection counts for object F1.
        area_pred, area_gt: Total object area of the prediction and of the ground truth (pixels).
        dice_pred, dice_gt: ``sum_i |S_i| Dice(G_i, S_i)`` and ``sum_j |G~_j| Dice(G~_j, S~_j)``.
        hausdorff_pred, hausdorff_gt: The same sums with the Hausdorff distance (``nan`` when the
            Hausdorff distance was not asked for).
    """

    tp: int
    fp: int
    fn: int
    area_pred: int
    area_gt: int
    dice_pred: float
    dice_gt: float
    hausdorff_pred: float
    hausdorff_gt: float


def image_terms(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    tp_rule: str = ">",
    f1_fn_mode: str = "numG_minus_TP",
    empty_hausdorff: str = "diagonal",
    hausdorff: bool = True,
) -> ImageTerms:
    """Match the objects of one image and return the sums the three metrics are made of.

    Args:
        pred: Predicted instance labels, integer, 0 = background. Shape: (H, W).
        gt: Ground-truth instance labels, integer, 0 = background. Shape: (H, W).
        tp_rule: ``">"`` (official MATLAB): a segmented object is a TP when it covers strictly
            more than 50% of its partner; ``">="``: at least 50% (the web text).
        f1_fn_mode: ``"numG_minus_TP"`` (web text and the public ports): FN is the number of GT
            objects that are not the partner of a TP segment, which is n_G - TP under ``">"``;
            ``"setdiff"`` (one copy of ``F1score.m``): FN is the number of GT objects that are not
            the partner of any segmented object.
        empty_hausdorff: Hausdorff term of an object when the other side of its image is empty:
            ``"diagonal"`` (``sqrt(H^2 + W^2)``) or ``"inf"``.
        hausdorff: Compute the Hausdorff sums (the expensive part); when False they are ``nan``.

    Returns:
        The image's :class:`ImageTerms`.
    """
    _check_choice("tp_rule", tp_rule, TP_RULES)
    _check_choice("f1_fn_mode", f1_fn_mode, F1_FN_MODES)
    _check_choice("empty_hausdorff", empty_hausdorff, EMPTY_HAUSDORFF)
    pred, gt = _check_pair(pred, gt)
    pred_ids, n_pred = _compact(pred)
    gt_ids, n_gt = _compact(gt)

    # overlap[i, j] = |pred object i ∩ gt object j|, row/column 0 = background.
    overlap = np.bincount(
        (pred_ids * (n_gt + 1) + gt_ids).ravel(), minlength=(n_pred + 1) * (n_gt + 1)
    ).reshape(n_pred + 1, n_gt + 1)
    area_pred = overlap[1:].sum(axis=1)
    area_gt = overlap[:, 1:].sum(axis=0)
    inner = overlap[1:, 1:]

    partner_of_pred = _partners(inner)
    partner_of_gt = _partners(inner.T)

    # Detection counts (F1score.m).
    has_partner = partner_of_pred > 0
    idx = np.flatnonzero(has_partner)
    covered = inner[idx, partner_of_pred[idx] - 1]
    partner_area = area_gt[partner_of_pred[idx] - 1]
    is_tp = covered * 2 > partner_area if tp_rule == ">" else covered * 2 >= partner_area
    tp = int(is_tp.sum())
    if f1_fn_mode == "numG_minus_TP":
        fn = n_gt - np.unique(partner_of_pred[idx][is_tp]).size
    else:
        fn = n_gt - np.unique(partner_of_pred[idx]).size

    # Dice sums: |S_i| * 2|S_i ∩ G_i| / (|S_i| + |G_i|) = weight times Dice, 0 without a partner.
    dice_pred = 0.0
    for i in idx:
        j = partner_of_pred[i] - 1
        dice_pred += area_pred[i] * 2.0 * inner[i, j] / (area_pred[i] + area_gt[j])
    dice_gt = 0.0
    for j in np.flatnonzero(partner_of_gt):
        i = partner_of_gt[j] - 1
        dice_gt += area_gt[j] * 2.0 * inner[i, j] / (area_pred[i] + area_gt[j])

    hausdorff_pred = hausdorff_gt = math.nan
    if hausdorff:
        hausdorff_pred, hausdorff_gt = _hausdorff_sums(
            pred_ids, gt_ids, area_pred, area_gt, partner_of_pred, partner_of_gt, empty_hausdorff
        )
    return ImageTerms(
        tp=tp,
        fp=n_pred - tp,
        fn=int(fn),
        area_pred=int(area_pred.sum()),
        area_gt=int(area_gt.sum()),
        dice_pred=float(dice_pred),
        dice_gt=float(dice_gt),
        hausdorff_pred=hausdorff_pred,
        hausdorff_gt=hausdorff_gt,
    )


class _PairHausdorff:
    """Hausdorff distances between a pred object and a GT object of one image, cached per pair."""

    def __init__(self, pred_ids: np.ndarray, gt_ids: np.ndarray) -> None:
        self.pred_ids = pred_ids
        self.gt_ids = gt_ids
        # find_objects on the compact maps: slot k-1 holds the bounding box of object k.
        self.pred_boxes = ndimage.find_objects(pred_ids)
        self.gt_boxes = ndimage.find_objects(gt_ids)
        self.cache: dict[tuple[int, int], float] = {}

    def box(self, i: int, j: int) -> tuple[slice, slice]:
        p, g = self.pred_boxes[i - 1], self.gt_boxes[j - 1]
        return tuple(
            slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(p, g, strict=True)
        )

    def lower_bound(self, i: int, j: int) -> int:
        # The extreme row/column of one object is at least this far from every pixel of the other,
        # so H >= the largest difference of corresponding bounding-box edges.
        p, g = self.pred_boxes[i - 1], self.gt_boxes[j - 1]
        return max(
            max(abs(a.start - b.start), abs(a.stop - b.stop)) for a, b in zip(p, g, strict=True)
        )

    def __call__(self, i: int, j: int) -> float:
        key = (i, j)
        if key not in self.cache:
            box = self.box(i, j)
            self.cache[key] = _cropped_hausdorff(self.pred_ids[box] == i, self.gt_ids[box] == j)
        return self.cache[key]

    def nearest(self, fixed: int, candidates: int, fixed_is_pred: bool) -> float:
        """Smallest H from one object to any object of the other side (branch and bound)."""
        pairs = [(fixed, k) if fixed_is_pred else (k, fixed) for k in range(1, candidates + 1)]
        pairs.sort(key=lambda pair: self.lower_bound(*pair))
        best = math.inf
        for pair in pairs:
            if self.lower_bound(*pair) >= best:
                break
            best = min(best, self(*pair))
        return best


def _hausdorff_sums(
    pred_ids: np.ndarray,
    gt_ids: np.ndarray,
    area_pred: np.ndarray,
    area_gt: np.ndarray,
    partner_of_pred: np.ndarray,
    partner_of_gt: np.ndarray,
    empty_hausdorff: str,
) -> tuple[float, float]:
    n_pred, n_gt = area_pred.size, area_gt.size
    if n_pred == 0 or n_gt == 0:
        penalty = math.hypot(*pred_ids.shape) if empty_hausdorff == "diagonal" else math.inf
        # Only one side has objects; the empty side's sum stays 0 (0 * inf would be NaN).
        sum_pred = float(area_pred.sum() * penalty) if n_pred else 0.0
        sum_gt = float(area_gt.sum() * penalty) if n_gt else 0.0
        return sum_pred, sum_gt
    pair = _PairHausdorff(pred_ids, gt_ids)
    sum_pred = 0.0
    for i in range(1, n_pred + 1):
        j = int(partner_of_pred[i - 1])
        h = pair(i, j) if j else pair.nearest(i, n_gt, fixed_is_pred=True)
        sum_pred += area_pred[i - 1] * h
    sum_gt = 0.0
    for j in range(1, n_gt + 1):
        i = int(partner_of_gt[j - 1])
        h = pair(i, j) if i else pair.nearest(j, n_pred, fixed_is_pred=False)
        sum_gt += area_gt[j - 1] * h
    return float(sum_pred), float(sum_gt)


def _pooled_scores(terms: Sequence[ImageTerms]) -> dict[str, float]:
    """Set-level scores from summed terms (one image: that image's scores)."""
    tp = sum(t.tp for t in terms)
    fp = sum(t.fp for t in terms)
    fn = sum(t.fn for t in terms)
    area_pred = sum(t.area_pred for t in terms)
    area_gt = sum(t.area_gt for t in terms)
    f1 = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    scores = {"f1": f1}
    for name, empty_value in (("dice", 1.0), ("hausdorff", 0.0)):
        sum_pred = sum(getattr(t, f"{name}_pred") for t in terms)
        sum_gt = sum(getattr(t, f"{name}_gt") for t in terms)
        if area_pred == 0 and area_gt == 0:
            scores[name] = empty_value
        elif area_pred == 0:
            # Only GT objects: every term is a penalty (Dice 0, Hausdorff the empty penalty).
            scores[name] = sum_gt / area_gt
        elif area_gt == 0:
            scores[name] = sum_pred / area_pred
        else:
            scores[name] = 0.5 * (sum_pred / area_pred + sum_gt / area_gt)
    return scores


# ---------------------------------------------------------------------------------------------
# Public per-image metrics
# ---------------------------------------------------------------------------------------------


def object_f1(
    pred: np.ndarray, gt: np.ndarray, *, tp_rule: str = ">", f1_fn_mode: str = "numG_minus_TP"
) -> float:
    """GLaS object-level F1 score (detection) of one image.

    ``F1 = 2 TP / (2 TP + FP + FN)``: a segmented object is a TP when it has a partner (largest
    overlap, ties to the smallest label) and covers more than 50% of that partner's area;
    FP = n_S - TP; FN = n_G - TP.

    Args:
        pred: Predicted instance labels, integer, 0 = background. Shape: (H, W).
        gt: Ground-truth instance labels, integer, 0 = background. Shape: (H, W).
        tp_rule: ``">"`` (strict, official MATLAB, default) or ``">="`` (at least 50%).
        f1_fn_mode: ``"numG_minus_TP"`` (default) or ``"setdiff"``; see :func:`image_terms`.

    Returns:
        F1 in [0, 1]: 1 when neither side has objects, 0 when only one side has, 0 when TP = 0.
    """
    terms = image_terms(pred, gt, tp_rule=tp_rule, f1_fn_mode=f1_fn_mode, hausdorff=False)
    return _pooled_scores([terms])["f1"]


def object_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """GLaS object-level Dice of one image, area-weighted in both directions.

    ``Dice_obj = 1/2 [ sum_i w_i Dice(G_i, S_i) + sum_j w~_j Dice(G~_j, S~_j) ]`` with
    ``w_i = |S_i| / sum |S|`` and ``w~_j = |G~_j| / sum |G~|``; an object without a partner adds 0.

    Args:
        pred: Predicted instance labels, integer, 0 = background. Shape: (H, W).
        gt: Ground-truth instance labels, integer, 0 = background. Shape: (H, W).

    Returns:
        Dice in [0, 1]: 1 when neither side has objects, 0 when only one side has.
    """
    return _pooled_scores([image_terms(pred, gt, hausdorff=False)])["dice"]


def object_hausdorff(
    pred: np.ndarray, gt: np.ndarray, *, empty_hausdorff: str = "diagonal"
) -> float:
    """GLaS object-level Hausdorff distance of one image, area-weighted in both directions, in pixels.

    ``H_obj = 1/2 [ sum_i w_i H(G_i, S_i) + sum_j w~_j H(G~_j, S~_j) ]`` with the weights of
    :func:`object_dice`; an object without a partner uses its smallest Hausdorff distance to any
    object on the other side of the image. Distances are over all object pixels.

    Args:
        pred: Predicted instance labels, integer, 0 = background. Shape: (H, W).
        gt: Ground-truth instance labels, integer, 0 = background. Shape: (H, W).
        empty_hausdorff: Value when only one side has objects: ``"diagonal"`` (default, the image
            diagonal ``sqrt(H^2 + W^2)``) or ``"inf"``.

    Returns:
        The distance (lower is better): 0 when neither side has objects.
    """
    terms = image_terms(pred, gt, empty_hausdorff=empty_hausdorff)
    return _pooled_scores([terms])["hausdorff"]


# ---------------------------------------------------------------------------------------------
# Sets of images
# ---------------------------------------------------------------------------------------------


def glas_metrics(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    *,
    aggregate: str = "pooled",
    f1_fn_mode: str = "numG_minus_TP",
    tp_rule: str = ">",
    empty_hausdorff: str = "diagonal",
) -> dict[str, float | int]:
    """Object F1, object Dice and object Hausdorff over a set of images (one test part).

    ``aggregate="pooled"`` (default) is the challenge's written, set-level definition: objects of all
    images form one set, so TP/FP/FN are summed before F1 and the Dice/Hausdorff weights are
    normalised by the total object area of the whole set (partners are still searched within each
    image): ``Dice = 1/2 (sum D_S / sum A_S + sum D_G / sum A_G)``. ``aggregate="mean"`` averages the
    per-image scores, as many papers and public ports do; the two can differ a lot. Report GLaS
    test A and test B separately (:func:`glas_metrics_by_part`).

    Edge cases follow the per-image rules in the module docstring; in a pooled set an image with an
    empty side simply adds penalty terms (Dice 0, Hausdorff ``empty_hausdorff`` for each object).

    Args:
        preds: Predicted instance label maps, integer, 0 = background. Shape: each (H, W).
        gts: Ground-truth instance label maps, one per prediction, same shapes.
        aggregate: ``"pooled"`` or ``"mean"``.
        f1_fn_mode: ``"numG_minus_TP"`` or ``"setdiff"`` (:func:`image_terms`).
        tp_rule: ``">"`` or ``">="`` (:func:`image_terms`).
        empty_hausdorff: ``"diagonal"`` or ``"inf"`` (:func:`image_terms`).

    Returns:
        ``{"f1", "dice", "hausdorff", "n_images"}``.
    """
    _check_choice("aggregate", aggregate, AGGREGATES)
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predictions but {len(gts)} ground truths")
    if len(preds) == 0:
        raise ValueError("preds: expected at least one image")
    terms = [
        image_terms(p, g, tp_rule=tp_rule, f1_fn_mode=f1_fn_mode, empty_hausdorff=empty_hausdorff)
        for p, g in zip(preds, gts, strict=True)
    ]
    return aggregate_terms(terms, aggregate=aggregate)


def aggregate_terms(
    terms: Sequence[ImageTerms], *, aggregate: str = "pooled"
) -> dict[str, float | int]:
    """Scores of a set of images from their :func:`image_terms` (for streaming over many files).

    Args:
        terms: One :class:`ImageTerms` per image.
        aggregate: ``"pooled"`` (sums over the set) or ``"mean"`` (mean of per-image scores); see
            :func:`glas_metrics`.

    Returns:
        ``{"f1", "dice", "hausdorff", "n_images"}``.
    """
    _check_choice("aggregate", aggregate, AGGREGATES)
    if len(terms) == 0:
        raise ValueError("terms: expected at least one image")
    if aggregate == "pooled":
        scores = _pooled_scores(terms)
    else:
        per_image = [_pooled_scores([t]) for t in terms]
        scores = {k: float(np.mean([s[k] for s in per_image])) for k in ("f1", "dice", "hausdorff")}
    return {**scores, "n_images": len(terms)}


def glas_part(name: str) -> str:
    """The GLaS test part of an image name or file stem: ``"testA"``, ``"testB"`` or ``"other"``.

    ``"testA_12"``, ``"testA_12_anno"`` and ``"testA_12_seg"`` are all ``"testA"``.
    """
    match = _PART_PATTERN.match(name)
    return match.group(1) if match else "other"


def glas_metrics_by_part(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    names: Sequence[str],
    **options: str,
) -> dict[str, dict[str, float | int]]:
    """:func:`glas_metrics` separately for each GLaS part named in ``names``.

    Args:
        preds: Predicted instance label maps. Shape: each (H, W).
        gts: Ground-truth instance label maps, same shapes.
        names: Image names or file stems (``"testA_1"``), one per image; :func:`glas_part` groups
            them.
        **options: Passed to :func:`glas_metrics` (``aggregate``, ``tp_rule``, ...).

    Returns:
        ``{part: metrics}`` for the parts present, in the order testA, testB, other.
    """
    if not (len(preds) == len(gts) == len(names)):
        raise ValueError(
            f"got {len(preds)} predictions, {len(gts)} ground truths and {len(names)} names"
        )
    groups: Mapping[str, list[int]] = {part: [] for part in PARTS}
    for index, name in enumerate(names):
        groups[glas_part(name)].append(index)
    return {
        part: glas_metrics([preds[i] for i in idx], [gts[i] for i in idx], **options)
        for part, idx in groups.items()
        if idx
    }
