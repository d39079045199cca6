"""Spot checks of the transcribed published numbers, and the paper's own cross-table consistency."""

from histodrl.experiments import paper_numbers as paper


def test_spot_checks_against_the_paper_text():
    assert paper.TABLE1["drl"]["dice"] == (0.896, 0.004)
    assert paper.TABLE1["genesis"]["hausdorff"] == (70.13, 2.25)
    assert paper.TABLE1["supervised_unet"]["f1"] == (0.870, None)
    assert paper.TABLE1_P_VALUES == {"f1": 0.0055, "dice": 0.0011, "hausdorff": 0.0516}
    assert paper.TABLE2["drl"]["conv4_4"] == (0.882, 0.005)
    assert paper.TABLE2["dim"]["conv3_4"] == (0.850, 0.008)
    assert paper.TABLE3["random"][0.0001] == (53.09, 2.89)
    assert paper.TABLE3["imagenet"][0.01] == (83.58, 1.90)
    assert paper.TABLE3["exemplar"][1.0] == (85.93, 0.92)
    assert paper.TABLE3_P_VALUES[0.01] == 0.2219
    assert paper.TABLE4["gch_soft"]["hausdorff"] == (55.71, 1.92)
    assert paper.TABLE4["fem"]["hausdorff"] == (50.55, 2.65)  # 2.64 in Table I
    assert paper.TABLE4_P_VALUES["fem"]["accuracy"] == 0.0006
    assert paper.TABLE4_P_VALUES["gch_hard"]["hausdorff"] == 0.3321
    assert paper.FIG4A_P_VALUES == {"conv2": 0.0031, "conv3": 0.0113, "conv4": 0.0176}


def test_every_row_has_every_column():
    for method, row in paper.TABLE1.items():
        assert set(row) == set(paper.SEGMENTATION_METRICS), method
    for method, row in paper.TABLE3.items():
        assert tuple(row) == paper.TABLE3_FRACTIONS, method
    assert set(paper.TABLE2["dim"]) == set(paper.TABLE2["drl"]) == set(paper.TABLE2_TAP_M)
    assert tuple(paper.TABLE4) == paper.TABLE4_VARIANTS
    assert set(paper.TABLE4_P_VALUES) == set(paper.TABLE4_VARIANTS) - {"baseline"}


def test_rows_the_paper_repeats_across_tables_agree():
    # Table IV's baseline is Table I's random init and Table III's random init at 100 %.
    for metric in paper.SEGMENTATION_METRICS:
        assert paper.TABLE4["baseline"][metric] == paper.TABLE1["random"][metric]
        assert paper.TABLE4["fem"][metric][0] == paper.TABLE1["drl"][metric][0]
    assert paper.TABLE4["baseline"]["accuracy"] == paper.TABLE3["random"][1.0]
    assert paper.TABLE4["fem"]["accuracy"] == paper.TABLE3["drl"][1.0]


def test_table2_resolutions_are_those_of_256_px_crops():
    strides = {"conv3_4": 4, "conv4_4": 8, "conv5_4": 16, "pool5": 32}
    assert {tap: 256 // s for tap, s in strides.items()} == paper.TABLE2_TAP_M
