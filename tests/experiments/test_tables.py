"""The experiment definitions: which arms, tasks and pretraining options each table runs."""

import pytest

from histodrl.errors import UserInputError
from histodrl.experiments.paper_numbers import FIG4B_LAMBDAS, TABLE3_FRACTIONS
from histodrl.experiments.tables import (
    DRL,
    EXPERIMENT_NAMES,
    SCALES,
    TAP_STRIDES,
    Task,
    Variant,
    experiment,
    pretrain_options,
    pretrain_values,
    tap_resolution,
)
from histodrl.nn import vgg19_bn
from histodrl.pretext.options import METHODS


def test_tap_strides_are_the_trunks():
    trunk = vgg19_bn(width=0.125)
    assert {tap: trunk.tap_stride(tap) for tap in TAP_STRIDES} == TAP_STRIDES
    assert tap_resolution("conv4_4", 256) == 32 and tap_resolution("pool5", 64) == 2


def test_every_experiment_builds_with_unique_keys_and_known_methods():
    for name in EXPERIMENT_NAMES:
        exp = experiment(name)
        keys = [arm.variant.key for arm in exp.arms]
        assert len(keys) == len(set(keys)), name
        for arm in exp.arms:
            assert arm.tasks
            assert arm.variant.method is None or arm.variant.method in METHODS
            assert {t.dataset for t in arm.tasks} <= set(exp.datasets)


def test_unknown_experiment_is_a_user_error():
    with pytest.raises(UserInputError, match="table9: unknown table or figure"):
        experiment("table9")


def test_imagenet_arm_only_when_weights_are_given():
    for name in ("table1", "table3", "fig4"):
        assert "imagenet" not in [a.variant.key for a in experiment(name).arms]
        assert "imagenet" in [a.variant.key for a in experiment(name, imagenet=True).arms]


def test_table1_and_table3_run_every_pretext_method_plus_random_init():
    for name in ("table1", "table3"):
        methods = {a.variant.method for a in experiment(name).arms} - {None}
        assert methods == set(METHODS)
        assert "random" in [a.variant.key for a in experiment(name).arms]
    assert [t.fraction for t in experiment("table3").arms[0].tasks] == list(TABLE3_FRACTIONS)


def test_table2_changes_only_the_tap_of_dim_and_drl():
    arms = experiment("table2").arms
    assert [a.variant.key for a in arms][:2] == ["dim-conv3_4", "dim-conv4_4"]
    assert {a.variant.options for a in arms} == {("--tap", t) for t in TAP_STRIDES}
    assert {a.variant.method for a in arms} == {"dim", "drl"}


def test_table4_variants_are_the_paper_ablation():
    exp = experiment("table4")
    options = {a.variant.key: (a.variant.init, a.variant.options) for a in exp.arms}
    assert options == {
        "baseline": ("random", ()),
        "lsh": ("pretrain", ("--gch", "none", "--no-fem")),
        "gch-hard": ("pretrain", ("--gch", "hard", "--no-fem")),
        "gch-soft": ("pretrain", ("--gch", "soft", "--no-fem")),
        "fem": ("pretrain", ()),
    }
    assert all({t.folder for t in a.tasks} == {"segment", "classify-f1"} for a in exp.arms)


def test_fig4_sweeps_lambda_and_reuses_drl_for_hard_0_5():
    exp = experiment("fig4")
    drl = next(a for a in exp.arms if a.variant is DRL)
    assert {t.kind for t in drl.tasks} == {"probe", "classify"}
    sweep = [a.variant for a in exp.arms if all(t.kind == "classify" for t in a.tasks)]
    assert len(sweep) == 2 * len(FIG4B_LAMBDAS) - 1
    assert ("--gch", "soft", "--lambda", "0.5") in [v.options for v in sweep]
    assert all("--lambda" in v.options for v in sweep)


def test_the_preset_sets_lambda_per_task_and_a_variant_lambda_wins():
    assert pretrain_options(DRL, "glas") == ["--method", "drl", "--preset", "histodrl"]
    assert pretrain_options(DRL, "pcam", "paper") == ["--method", "drl", "--preset", "paper"]
    # histodrl: lambda 0.5 everywhere; paper: the paper's 0.01 on GLaS, 0.5 on PCam, post-ReLU.
    for dataset in ("glas", "pcam"):
        values = pretrain_values(DRL, dataset)
        assert (values["lambda_"], values["global_head"]) == (0.5, "preact")
    assert pretrain_values(DRL, "glas", "paper")["lambda_"] == 0.01
    assert pretrain_values(DRL, "pcam", "paper")["lambda_"] == 0.5
    assert pretrain_values(DRL, "glas", "paper")["global_head"] == "relu"
    swept = Variant("x", "x", method="drl", options=("--lambda", "1"))
    assert pretrain_values(swept, "pcam", "paper")["lambda_"] == 1.0
    assert pretrain_values(swept, "glas")["lambda_"] == 1.0
    dim = Variant("dim", "DIM", method="dim")
    assert pretrain_options(dim, "pcam") == ["--method", "dim", "--preset", "histodrl"]
    with pytest.raises(ValueError, match="no pretraining"):
        pretrain_options(Variant("r", "r", init="random"), "glas")


def test_task_folders_and_datasets():
    assert Task("classify", 0.0001).folder == "classify-f0.0001"
    assert Task("classify", 1.0).folder == "classify-f1"
    assert (Task("segment").dataset, Task("embed").dataset, Task("probe").dataset) == (
        "glas",
        "glas",
        "pcam",
    )
    with pytest.raises(ValueError, match="fraction"):
        Task("classify", 0.0)
    with pytest.raises(ValueError, match="kind"):
        Task("detect")


def test_scales_smoke_is_small_and_paper_uses_the_paper_sizes():
    smoke, full = SCALES["smoke"], SCALES["paper"]
    assert (smoke.width, smoke.glas_crop) == (0.125, 64) and smoke.pcam_crop <= 96
    assert (full.width, full.glas_crop, full.pcam_crop) == (1.0, 256, 96)
    assert full.pretrain == full.segment == full.classify == full.probe == ()
