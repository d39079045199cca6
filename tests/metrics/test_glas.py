"""GLaS object metrics: hand-worked edge cases, a brute-force reference, and real annotations."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from histodrl.metrics.glas import (
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

# ---------------------------------------------------------------------------------------------
# Brute-force reference: explicit loops over objects, Hausdorff from all pairwise pixel distances.
# ---------------------------------------------------------------------------------------------


def ref_hausdorff(a, b):
    pa, pb = np.argwhere(a), np.argwhere(b)
    d = cdist(pa, pb)
    return max(d.min(axis=1).max(), d.min(axis=0).max())


def ref_partner(mask, other, other_labels):
    best, best_count = 0, 0
    for label in sorted(other_labels):  # ascending, and only a strictly larger count wins
        count = int(np.sum(mask & (other == label)))
        if count > best_count:
            best, best_count = label, count
    return best


def ref_terms(pred, gt, tp_rule=">", fn_mode="numG_minus_TP", penalty=None):
    """Per-image sums, written from the definitions with loops."""
    s_labels = sorted(set(pred.ravel().tolist()) - {0})
    g_labels = sorted(set(gt.ravel().tolist()) - {0})
    if penalty is None:
        penalty = math.sqrt(pred.shape[0] ** 2 + pred.shape[1] ** 2)
    out = dict(tp=0, fp=0, fn=0, a_s=0, a_g=0, d_s=0.0, d_g=0.0, h_s=0.0, h_g=0.0)
    tp_partners, any_partners = set(), set()
    for s in s_labels:
        s_mask = pred == s
        area = int(s_mask.sum())
        out["a_s"] += area
        g = ref_partner(s_mask, gt, g_labels)
        if g:
            g_mask = gt == g
            inter = int(np.sum(s_mask & g_mask))
            frac = inter / g_mask.sum()
            any_partners.add(g)
            if (frac > 0.5) if tp_rule == ">" else (frac >= 0.5):
                out["tp"] += 1
                tp_partners.add(g)
            out["d_s"] += area * 2 * inter / (area + g_mask.sum())
            out["h_s"] += area * ref_hausdorff(s_mask, g_mask)
        elif g_labels:
            out["h_s"] += area * min(ref_hausdorff(s_mask, gt == k) for k in g_labels)
        else:
            out["h_s"] += area * penalty
    out["fp"] = len(s_labels) - out["tp"]
    partners = tp_partners if fn_mode == "numG_minus_TP" else any_partners
    out["fn"] = len(g_labels) - len(partners)
    for g in g_labels:
        g_mask = gt == g
        area = int(g_mask.sum())
        out["a_g"] += area
        s = ref_partner(g_mask, pred, s_labels)
        if s:
            s_mask = pred == s
            inter = int(np.sum(s_mask & g_mask))
            out["d_g"] += area * 2 * inter / (area + s_mask.sum())
            out["h_g"] += area * ref_hausdorff(g_mask, s_mask)
        elif s_labels:
            out["h_g"] += area * min(ref_hausdorff(g_mask, pred == k) for k in s_labels)
        else:
            out["h_g"] += area * penalty
    return out


def ref_scores(terms_list):
    """Pooled scores from summed reference terms (one image: its per-image scores)."""
    tot = {k: sum(t[k] for t in terms_list) for k in terms_list[0]}
    if tot["tp"] + tot["fp"] + tot["fn"] == 0:
        f1 = 1.0
    elif tot["tp"] == 0:
        f1 = 0.0
    else:
        precision = tot["tp"] / (tot["tp"] + tot["fp"])
        recall = tot["tp"] / (tot["tp"] + tot["fn"])
        f1 = 2 * precision * recall / (precision + recall)
    if tot["a_s"] == 0 and tot["a_g"] == 0:
        return {"f1": f1, "dice": 1.0, "hausdorff": 0.0}
    if tot["a_s"] == 0:
        return {"f1": f1, "dice": tot["d_g"] / tot["a_g"], "hausdorff": tot["h_g"] / tot["a_g"]}
    if tot["a_g"] == 0:
        return {"f1": f1, "dice": tot["d_s"] / tot["a_s"], "hausdorff": tot["h_s"] / tot["a_s"]}
    return {
        "f1": f1,
        "dice": 0.5 * (tot["d_s"] / tot["a_s"] + tot["d_g"] / tot["a_g"]),
        "hausdorff": 0.5 * (tot["h_s"] / tot["a_s"] + tot["h_g"] / tot["a_g"]),
    }


def random_pair(seed):
    """A small GT map with sparse labels (some > 255) and a perturbed prediction of it."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(24, 40, size=2)
    gt = np.zeros((h, w), dtype=np.int32)
    pred = np.zeros((h, w), dtype=np.int32)
    n_gt = int(rng.integers(0, 6)) if seed % 7 else 0
    gt_ids = rng.choice(np.arange(1, 70000), size=n_gt, replace=False)
    pred_ids = iter(rng.choice(np.arange(1, 70000), size=3 * n_gt + 4, replace=False))
    for label in gt_ids:
        r, c = rng.integers(0, h - 3), rng.integers(0, w - 3)
        dr, dc = rng.integers(2, 12, size=2)
        gt[r : r + dr, c : c + dc] = label
        if seed % 11 and rng.random() < 0.85:  # a jittered, resized copy, sometimes split in two
            jr, jc = rng.integers(-3, 4, size=2)
            er, ec = rng.integers(-2, 3, size=2)
            r0, c0 = max(r + jr, 0), max(c + jc, 0)
            pred[r0 : r0 + max(dr + er, 1), c0 : c0 + max(dc + ec, 1)] = next(pred_ids)
            if rng.random() < 0.3:
                pred[r0 : r0 + max(dr + er, 1) // 2, c0 : c0 + max(dc + ec, 1)] = next(pred_ids)
    for _ in range(int(rng.integers(0, 3))):  # false positives
        r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
        pred[r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = next(pred_ids)
    return pred, gt


# ---------------------------------------------------------------------------------------------
# Hausdorff distance between two masks
# ---------------------------------------------------------------------------------------------


def test_hausdorff_distance_matches_pairwise_distances_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(30):
        a = rng.random((20, 25)) < rng.uniform(0.01, 0.3)
        b = rng.random((20, 25)) < rng.uniform(0.01, 0.3)
        a[rng.integers(20), rng.integers(25)] = True
        b[rng.integers(20), rng.integers(25)] = True
        assert hausdorff_distance(a, b) == pytest.approx(ref_hausdorff(a, b), abs=1e-9)


def test_hausdorff_distance_is_zero_for_two_empty_masks_and_inf_for_one():
    empty = np.zeros((4, 4), dtype=bool)
    one = empty.copy()
    one[1, 1] = True
    assert hausdorff_distance(empty, empty) == 0.0
    assert hausdorff_distance(one, empty) == math.inf
    assert hausdorff_distance(empty, one) == math.inf


def test_hausdorff_uses_all_pixels_not_only_boundaries():
    # A filled 9x9 square vs the same square with a 5x5 hole: every boundary pixel is shared, but
    # the hole's centre pixel (4, 4) of the filled square is 3 px from the nearest ring pixel.
    filled = np.zeros((9, 9), dtype=bool)
    filled[:, :] = True
    ring = filled.copy()
    ring[2:7, 2:7] = False
    assert hausdorff_distance(filled, ring) == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------
# The edge-case table of DATASETS_AND_METRICS.md §1.5, one test per row
# ---------------------------------------------------------------------------------------------


def test_row_no_objects_on_either_side_gives_f1_1_dice_1_hausdorff_0():
    empty = np.zeros((5, 5), dtype=np.int32)
    assert object_f1(empty, empty) == 1.0
    assert object_dice(empty, empty) == 1.0
    assert object_hausdorff(empty, empty) == 0.0


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_row_one_side_empty_gives_f1_0_dice_0_and_the_hausdorff_penalty(empty_side):
    objects = np.zeros((10, 20), dtype=np.int32)
    objects[2:4, 2:4] = 5
    empty = np.zeros_like(objects)
    pred, gt = (empty, objects) if empty_side == "pred" else (objects, empty)
    # TP = 0 and one of FP/FN is 1: F1 = 2*0 / (0 + 1) = 0; every Dice term is 0.
    assert object_f1(pred, gt) == 0.0
    assert object_dice(pred, gt) == 0.0
    # Every object's term is the penalty, so the weighted average is the penalty itself:
    # diagonal = sqrt(10^2 + 20^2) = sqrt(500) = 22.3607.
    assert object_hausdorff(pred, gt) == pytest.approx(math.sqrt(500))
    assert object_hausdorff(pred, gt, empty_hausdorff="inf") == math.inf


def test_row_no_true_positive_gives_f1_0_while_dice_and_hausdorff_stay_normal():
    gt = np.zeros((6, 6), dtype=np.int32)
    gt[0:4, 0:4] = 1  # 16 px
    pred = np.zeros_like(gt)
    pred[0, 0:4] = 1  # 4 px inside it: covers 4/16 = 25%, not a TP
    # TP = 0, FP = 1, FN = 1 -> F1 = 0 (the MATLAB gives NaN from 0/0).
    assert object_f1(pred, gt) == 0.0
    # Both directions pair the two objects: Dice = 2*4 / (4 + 16) = 0.4, weights 1 -> 0.4.
    assert object_dice(pred, gt) == pytest.approx(0.4)
    # pred is inside gt (0 one way); gt row 3 is 3 px from pred row 0 -> H = 3 both directions.
    assert object_hausdorff(pred, gt) == pytest.approx(3.0)


def test_row_overlap_of_exactly_half_is_not_a_true_positive_under_the_strict_rule():
    gt = np.zeros((6, 6), dtype=np.int32)
    gt[0:4, 0:4] = 1  # 16 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:4] = 1  # 8 px = exactly 50%
    # Strict '>': 8/16 = 0.5 is not > 0.5 -> TP 0, FP 1, FN 1 -> F1 0.
    assert object_f1(pred, gt) == 0.0
    # '>=': TP 1, FP 0, FN 0 -> F1 = 2/(2+0+0) = 1.
    assert object_f1(pred, gt, tp_rule=">=") == 1.0
    # Dice does not depend on the rule: 2*8 / (8 + 16) = 2/3.
    assert object_dice(pred, gt) == pytest.approx(2 / 3)


def test_two_halves_under_the_inclusive_rule_never_give_a_negative_fn():
    gt = np.zeros((6, 6), dtype=np.int32)
    gt[0:4, 0:4] = 1
    pred = np.zeros_like(gt)
    pred[0:2, 0:4] = 1
    pred[2:4, 0:4] = 2
    # '>=': both halves are TP (TP = 2, FP = 0); the GT object has a TP so FN = 1 - 1 = 0,
    # F1 = 2*2 / (2*2 + 0 + 0) = 1 (n_G - TP would give FN = -1 and F1 = 4/3).
    terms = image_terms(pred, gt, tp_rule=">=", hausdorff=False)
    assert (terms.tp, terms.fp, terms.fn) == (2, 0, 0)
    assert object_f1(pred, gt, tp_rule=">=") == 1.0


def test_row_object_touching_only_background_is_fp_with_dice_0_and_nearest_hausdorff():
    gt = np.zeros((6, 16), dtype=np.int32)
    gt[1:4, 1:4] = 1  # A: 9 px
    gt[1:4, 11:14] = 2  # B: 9 px
    pred = np.zeros_like(gt)
    pred[1:4, 1:4] = 1  # S1 = A exactly
    pred[1:3, 6:8] = 2  # S2: 4 px on background only
    # S1 is a TP, S2 an FP (no partner); B has no TP: F1 = 2*1 / (2 + 1 + 1) = 0.5.
    assert object_f1(pred, gt) == pytest.approx(0.5)
    # Pred side (9*1 + 4*0) / 13; GT side (9*1 + 9*0) / 18 = 0.5 (B overlaps nothing either).
    assert object_dice(pred, gt) == pytest.approx(0.5 * (9 / 13 + 0.5))
    # S2 -> nearest by H: H(S2, A): A's (3, 1) to S2's (2, 6) = sqrt(1 + 25) = sqrt(26);
    #   H(S2, B): B's (3, 13) to S2's (2, 7) = sqrt(1 + 36) = sqrt(37) -> term sqrt(26).
    # B -> H(B, S1) = 10 (columns 1 vs 11, 3 vs 13), H(B, S2) = sqrt(37) -> term sqrt(37).
    # H = 1/2 * ((9*0 + 4*sqrt(26)) / 13 + (9*0 + 9*sqrt(37)) / 18).
    expected = 0.5 * (4 * math.sqrt(26) / 13 + math.sqrt(37) / 2)
    assert object_hausdorff(pred, gt) == pytest.approx(expected)


def test_unmatched_object_takes_the_smallest_hausdorff_not_the_nearest_pixel():
    gt = np.zeros((3, 21), dtype=np.int32)
    gt[1, 0:21] = 1  # a long bar one row below the prediction: nearest pixel 1, H = 10
    gt[0, 9] = 2  # a single pixel 4 columns away: H = 4
    pred = np.zeros_like(gt)
    pred[0, 5] = 3
    # The pred pixel (0, 5) overlaps nothing. H(bar) = max over bar pixels: (1, 20) -> (0, 5) =
    # sqrt(1 + 225) = 15.03; H(single) = 4. Its term is min = 4 (weight 1/1 on the pred side).
    terms = image_terms(pred, gt)
    assert terms.hausdorff_pred == pytest.approx(4.0)


def test_row_ties_in_overlap_go_to_the_smallest_label():
    gt = np.zeros((2, 6), dtype=np.int32)
    gt[0:2, 0:2] = 7  # 4 px, first in raster order
    gt[0:2, 2:6] = 3  # 8 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:4] = 1  # 8 px: 4 px of label 7 and 4 px of label 3 -> partner 3
    # Partner 3: 4/8 = 50% is not > 50% -> no TP, F1 0 (partner 7 would give 4/4 and F1 2/3).
    assert object_f1(pred, gt) == 0.0
    # Pred side: Dice(S, 3) = 2*4/(8+8) = 0.5.  GT side: 7 -> 2*4/(4+8) = 2/3, 3 -> 0.5,
    # weighted (4*2/3 + 8*0.5) / 12 = 5/9.  Dice = (0.5 + 5/9) / 2.
    assert object_dice(pred, gt) == pytest.approx(0.5 * (0.5 + 5 / 9))


def test_ties_on_the_ground_truth_side_also_go_to_the_smallest_label():
    gt = np.zeros((2, 4), dtype=np.int32)
    gt[:, :] = 1  # 8 px
    pred = np.zeros_like(gt)
    pred[:, 0:2] = 9  # 4 px
    pred[:, 2:4] = 5  # 4 px
    # GT 1's partner is 5 (tie 4 vs 4). Both preds are FPs (4/8 not > 50%).
    # Dice: pred side 9 -> 2*4/12, 5 -> 2*4/12 -> 2/3; GT side with 5: 2/3 -> Dice 2/3.
    # Hausdorff: pred 5 covers columns 2-3, GT column 0 is 2 px away: H(GT, 5) = 2,
    # and by symmetry H(GT, 9) = 2, so the tie only shows in which pair was used.
    terms = image_terms(pred, gt, hausdorff=False)
    assert terms.dice_gt == pytest.approx(8 * 2 / 3)
    swapped = np.where(pred == 9, 2, np.where(pred == 5, 9, 0)).astype(np.int32)
    # Swapping ids keeps the scores: the rule picks by label value, not by position.
    assert object_dice(swapped, gt) == pytest.approx(object_dice(pred, gt))


def test_row_labels_above_255_are_distinct_objects():
    gt = np.zeros((4, 8), dtype=np.int32)
    gt[0:2, 0:2] = 1
    gt[0:2, 5:8] = 257  # 257 would wrap to 1 in uint8 and merge with the first object
    pred = gt.copy()
    assert (object_f1(pred, gt), object_dice(pred, gt), object_hausdorff(pred, gt)) == (1, 1, 0)
    big = np.where(gt == 1, 70000, np.where(gt == 257, 300, 0)).astype(np.int64)
    assert (object_f1(big, gt), object_dice(big, gt), object_hausdorff(big, gt)) == (1, 1, 0)
    # A prediction of just the first object: 1 TP, 1 FN -> F1 = 2/(2+0+1) = 2/3.
    assert object_f1(np.where(gt == 1, 1, 0), gt) == pytest.approx(2 / 3)


def test_huge_labels_covering_the_whole_image_without_background():
    gt = np.full((4, 6), 2_000_000_000, dtype=np.int64)
    gt[:, 3:] = 100_000
    pred = np.zeros_like(gt)
    pred[:, :4] = 7  # all of the first object (12 px) and 4 px of the second
    # Pred 7's partner: 12 px of 2e9 vs 4 px of 1e5 -> 2e9, covered fully -> TP; FN: 1e5 -> F1 2/3.
    assert object_f1(pred, gt) == pytest.approx(2 / 3)
    # Pred side: 16 * 2*12/(16+12). GT side: 2e9 -> 12 * 2*12/28, 1e5 (partner 7, 4 px of 12) ->
    # 12 * 2*4/(16+12).
    expected = 0.5 * (2 * 12 / 28 + (12 * 24 / 28 + 12 * 8 / 28) / 24)
    assert object_dice(pred, gt) == pytest.approx(expected)
    assert (object_f1(gt, gt), object_dice(gt, gt), object_hausdorff(gt, gt)) == (1, 1, 0)


def test_labels_are_never_relabelled_so_a_split_label_is_one_object():
    gt = np.zeros((3, 9), dtype=np.int32)
    gt[:, 0:2] = 4
    gt[:, 7:9] = 4  # the same label on two separate pieces is one object of 12 px
    pred = np.zeros_like(gt)
    pred[:, 0:2] = 1  # covers 6 of 12 px = 50% -> FP under '>'
    assert object_f1(pred, gt) == 0.0
    assert object_f1(gt.copy(), gt) == 1.0


# ---------------------------------------------------------------------------------------------
# Switches and aggregation
# ---------------------------------------------------------------------------------------------


def test_setdiff_fn_mode_does_not_count_a_partnered_but_uncovered_gt_object():
    gt = np.zeros((6, 12), dtype=np.int32)
    gt[0:4, 0:4] = 1  # 16 px, only 4 px covered
    gt[0:3, 8:11] = 2  # matched exactly
    pred = np.zeros_like(gt)
    pred[0, 0:4] = 1
    pred[0:3, 8:11] = 2
    # TP = 1, FP = 1. numG - TP: FN = 2 - 1 = 1 -> F1 = 2/(2+1+1) = 0.5.
    # setdiff: both GT objects are some segment's partner -> FN = 0 -> F1 = 2/(2+1+0) = 2/3.
    assert object_f1(pred, gt) == pytest.approx(0.5)
    assert object_f1(pred, gt, f1_fn_mode="setdiff") == pytest.approx(2 / 3)


def test_pooled_and_mean_aggregation_differ_as_worked_out():
    gt1 = np.zeros((12, 12), dtype=np.int32)
    gt1[0:10, 0:10] = 1  # 100 px, predicted exactly
    gt2 = np.zeros((4, 4), dtype=np.int32)
    gt2[0:2, 0:2] = 1  # 4 px
    pred2 = np.zeros_like(gt2)
    pred2[0:2, 0:1] = 1  # 2 px inside it: Dice 2*2/(2+4) = 2/3, H = 1 (column 1 to column 0)
    preds, gts = [gt1.copy(), pred2], [gt1, gt2]
    mean = glas_metrics(preds, gts, aggregate="mean")
    pooled = glas_metrics(preds, gts)
    # Mean: Dice (1 + 2/3)/2, H (0 + 1)/2.
    assert mean["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert mean["hausdorff"] == pytest.approx(0.5)
    # Pooled: pred side (100*1 + 2*2/3)/102, GT side (100*1 + 4*2/3)/104;
    #         H: (100*0 + 2*1)/102 and (100*0 + 4*1)/104.
    assert pooled["dice"] == pytest.approx(0.5 * ((100 + 4 / 3) / 102 + (100 + 8 / 3) / 104))
    assert pooled["hausdorff"] == pytest.approx(0.5 * (2 / 102 + 4 / 104))
    # F1: image 2 is FP + FN (2/4 is not > 50%): pooled TP 1, FP 1, FN 1 -> 0.5; mean (1+0)/2.
    assert pooled["f1"] == pytest.approx(0.5) and mean["f1"] == pytest.approx(0.5)
    assert pooled["n_images"] == mean["n_images"] == 2


def test_pooled_set_with_an_empty_prediction_adds_penalty_terms():
    gt1 = np.zeros((6, 8), dtype=np.int32)
    gt1[0:2, 0:2] = 1  # 4 px, predicted exactly
    gt2 = np.zeros((6, 8), dtype=np.int32)
    gt2[0:3, 0:4] = 2  # 12 px, nothing predicted
    preds = [gt1.copy(), np.zeros_like(gt2)]
    pooled = glas_metrics(preds, [gt1, gt2])
    # Pred side: 4 px, all perfect. GT side: 4*0 + 12*sqrt(6^2 + 8^2) = 12*10 over 16 px.
    assert pooled["hausdorff"] == pytest.approx(0.5 * (0 + 120 / 16))
    assert pooled["dice"] == pytest.approx(0.5 * (1 + 4 / 16))
    # TP 1, FP 0, FN 1 -> 2/3.
    assert pooled["f1"] == pytest.approx(2 / 3)


def test_inf_penalty_makes_a_pooled_set_with_an_empty_side_infinite_not_nan():
    gt = np.zeros((6, 8), dtype=np.int32)
    gt[0:2, 0:2] = 1
    preds = [gt.copy(), np.zeros_like(gt)]
    result = glas_metrics(preds, [gt, gt], empty_hausdorff="inf")
    assert result["hausdorff"] == math.inf
    # An image with no GT and no prediction adds nothing, even with the inf penalty.
    both_empty = glas_metrics(
        [gt.copy(), np.zeros_like(gt)], [gt, np.zeros_like(gt)], empty_hausdorff="inf"
    )
    assert both_empty["hausdorff"] == 0.0


def test_per_image_metrics_match_the_brute_force_reference_on_random_maps():
    for seed in range(40):
        pred, gt = random_pair(seed)
        for tp_rule in (">", ">="):
            for fn_mode in ("numG_minus_TP", "setdiff"):
                ref = ref_scores([ref_terms(pred, gt, tp_rule, fn_mode)])
                got = object_f1(pred, gt, tp_rule=tp_rule, f1_fn_mode=fn_mode)
                assert got == pytest.approx(ref["f1"], abs=1e-12), (seed, tp_rule, fn_mode)
        ref = ref_scores([ref_terms(pred, gt)])
        assert object_dice(pred, gt) == pytest.approx(ref["dice"], abs=1e-12), seed
        assert object_hausdorff(pred, gt) == pytest.approx(ref["hausdorff"], abs=1e-9), seed


def test_set_metrics_match_the_brute_force_reference_pooled_and_mean():
    pairs = [random_pair(seed) for seed in range(100, 112)]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    ref_terms_list = [ref_terms(p, g) for p, g in pairs]
    pooled = glas_metrics(preds, gts)
    ref_pooled = ref_scores(ref_terms_list)
    for key in ("f1", "dice", "hausdorff"):
        assert pooled[key] == pytest.approx(ref_pooled[key], abs=1e-9), key
    mean = glas_metrics(preds, gts, aggregate="mean")
    per_image = [ref_scores([t]) for t in ref_terms_list]
    for key in ("f1", "dice", "hausdorff"):
        assert mean[key] == pytest.approx(np.mean([s[key] for s in per_image]), abs=1e-9), key


def test_aggregate_terms_equals_glas_metrics():
    pairs = [random_pair(seed) for seed in range(3)]
    terms = [image_terms(p, g) for p, g in pairs]
    direct = glas_metrics([p for p, _ in pairs], [g for _, g in pairs], aggregate="mean")
    assert aggregate_terms(terms, aggregate="mean") == direct


def test_input_dtype_does_not_change_the_scores():
    pred, gt = random_pair(3)
    small = [(np.unique(a, return_inverse=True)[1].reshape(a.shape)) for a in (pred, gt)]
    for dtype in (np.uint16, np.int32, np.int64):
        a, b = small[0].astype(dtype), small[1].astype(dtype)
        assert object_dice(a, b) == pytest.approx(object_dice(pred, gt))


# ---------------------------------------------------------------------------------------------
# Validation and parts
# ---------------------------------------------------------------------------------------------


def test_probability_maps_and_wrong_shapes_are_rejected_with_the_value_named():
    labels = np.zeros((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="instances_from_mask"):
        object_f1(labels.astype(np.float32), labels)
    with pytest.raises(ValueError, match="instances_from_mask"):
        object_dice(labels.astype(bool), labels)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        object_dice(labels, np.zeros((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        object_dice(labels - 1, labels)
    with pytest.raises(ValueError, match="tp_rule"):
        object_f1(labels, labels, tp_rule=">>")
    with pytest.raises(ValueError, match="aggregate"):
        glas_metrics([labels], [labels], aggregate="median")
    with pytest.raises(ValueError, match="empty_hausdorff"):
        object_hausdorff(labels, labels, empty_hausdorff="zero")
    with pytest.raises(ValueError, match="at least one"):
        glas_metrics([], [])


def test_glas_part_reads_the_part_from_names_and_stems():
    assert glas_part("testA_1") == "testA"
    assert glas_part("testA_10_anno") == "testA"
    assert glas_part("testB_3_seg") == "testB"
    assert glas_part("train_3") == "other"
    assert glas_part("testAB_1") == "other"


def test_metrics_by_part_scores_each_part_separately():
    good = np.zeros((6, 6), dtype=np.int32)
    good[1:4, 1:4] = 1
    empty = np.zeros_like(good)
    result = glas_metrics_by_part(
        [good, empty, good], [good, good, good], ["testA_1", "testB_1", "train_1"]
    )
    assert list(result) == ["testA", "testB", "other"]
    assert result["testA"]["f1"] == 1.0 and result["testB"]["f1"] == 0.0
    assert result["other"]["n_images"] == 1


# ---------------------------------------------------------------------------------------------
# Real GLaS annotations
# ---------------------------------------------------------------------------------------------


def glas_samples() -> Path:
    candidates = [
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glas-samples",
        Path("/work/shared/data/glas-samples"),
    ]
    for path in candidates:
        if (path / "ground-truth").is_dir():
            return path
    pytest.skip(f"GLaS sample fixtures not found in {', '.join(map(str, candidates))}")


def load_samples():
    root = glas_samples()
    gts = [np.array(Image.open(root / f"ground-truth/testA_{i}_anno.png")) for i in range(1, 5)]
    preds = [np.array(Image.open(root / f"predictions/testA_{i}_seg.png")) for i in range(1, 5)]
    return preds, gts


def test_real_annotations_scored_against_themselves_are_perfect():
    _, gts = load_samples()
    for aggregate in ("pooled", "mean"):
        result = glas_metrics(gts, [g.copy() for g in gts], aggregate=aggregate)
        assert (result["f1"], result["dice"], result["hausdorff"]) == (1.0, 1.0, 0.0)


def test_real_predictions_give_the_documented_pooled_and_mean_hausdorff():
    preds, gts = load_samples()
    # DATASETS_AND_METRICS.md §0.5: pooled ObjHausdorff 118.3 vs per-image mean 71.3.
    pooled = glas_metrics(preds, gts)
    mean = glas_metrics(preds, gts, aggregate="mean")
    assert pooled["hausdorff"] == pytest.approx(118.3, abs=0.05)
    assert mean["hausdorff"] == pytest.approx(71.3, abs=0.05)
    assert pooled["n_images"] == 4
    # F1 from counts: per image (TP, FP, FN) = (5,0,4), (2,0,0), (3,0,0), (5,0,0) -> pooled
    # 2*15 / (2*15 + 0 + 4) = 30/34; mean (10/14 + 1 + 1 + 1) / 4.
    counts = [image_terms(p, g, hausdorff=False) for p, g in zip(preds, gts)]
    assert [(t.tp, t.fp, t.fn) for t in counts] == [(5, 0, 4), (2, 0, 0), (3, 0, 0), (5, 0, 0)]
    assert pooled["f1"] == pytest.approx(30 / 34)
    assert mean["f1"] == pytest.approx((10 / 14 + 3) / 4)


def test_metrics_package_does_not_import_torch():
    code = "import sys, histodrl.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
