"""DRL end to end on a tiny CPU run, and the step's pieces on tensors."""

import csv
import math

import pytest
import torch

from histodrl.cli import main
from histodrl.pretext.drl import DRL


def _config(**over):
    base = {
        "method": "drl",
        "data": "folder:/nonexistent",
        "out": "/nonexistent/run",
        "crop": 64,
        "width": 0.125,
        "arch": "vgg19_bn",
        "seed": 0,
        "batch_size": 4,
        "lr": 1e-4,
        "epochs": 1.0,
        "max_steps": None,
        "tap": "conv4_4",
        "no_fem": False,
        "fem_branch_channels": 128,
        "gch": "hard",
        "lsh": "jsd",
        "lambda_": 0.5,
        "gamma": 0.1,
        "temperature": 1.0,
        "weight_temperature": 1.0,
        "gch_reduction": "mean",
        "detach_soft_target": False,
        "prior_penalty": 0.0,
        "sigma_range": [0.03, 0.05],
        "alpha_factor": 2.0,
        "deform_size": None,
        "log_every": 1,
        "compile": False,
    }
    base.update(over)
    return base


def _read_metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def _series(rows, key):
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"no_fem": True},
        {"gch": "soft"},
        {"gch": "none", "gamma": 0.0},
        {"lsh": "literal"},
        {"tap": "conv3_4"},
        {"resample_original": True},
    ],
)
def test_step_returns_finite_loss_and_gradients_reach_encoder_but_not_prior_d_from_main(over):
    torch.manual_seed(0)
    module = DRL(_config(**over))
    x = torch.rand(4, 3, 64, 64)
    loss, logs = module.pretext_step(x)
    assert torch.isfinite(loss)
    loss.backward()
    first_conv = module.encoder.features[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    # Layers after the tap are frozen: DRL does not train them.
    last_conv = [m for m in module.encoder.features if isinstance(m, torch.nn.Conv2d)][-1]
    assert not last_conv.weight.requires_grad
    assert 0 <= logs["gch_acc"] <= 1


def test_prior_discriminator_gets_gradient_only_from_its_own_loss():
    torch.manual_seed(0)
    module = DRL(_config(gch="none", lambda_=0.0))
    x = torch.rand(4, 3, 64, 64)
    _, logs = module.pretext_step(x)
    # The encoder's prior loss must not move the prior discriminator.
    logs["prior"].backward()
    for p in module.prior_d.parameters():
        assert p.grad is None or p.grad.abs().sum() == 0
    module.zero_grad()
    _, logs = module.pretext_step(x)
    logs["prior_d"].backward()
    assert all(p.grad is not None for p in module.prior_d.parameters())
    assert module.encoder.features[0].weight.grad is None or (
        module.encoder.features[0].weight.grad.abs().sum() == 0
    )


@pytest.mark.usefixtures("one_thread")
def test_tiny_pretraining_learns_to_tell_deformed_from_original(tissue_folder, tmp_path):
    # lambda 0.1: now that the GCH term trains (descriptors of either sign), at lambda 0.5 it holds
    # the LSH term back for the first ~50 steps (measured: sigma(T+) - sigma(T-) ~ 0.01 at step 40).
    run = tmp_path / "run"
    status = main(
        [
            "pretrain",
            "--data",
            f"glas:{tissue_folder}",
            "--out",
            str(run),
            "--width",
            "0.125",
            "--crop",
            "64",
            "--batch-size",
            "8",
            "--max-steps",
            "40",
            "--lambda",
            "0.1",
            "--lr",
            "1e-3",
            "--num-workers",
            "0",
            "--log-every",
            "1",
            "--no-progress",
        ]
    )
    assert status == 0
    rows = _read_metrics(run)
    lsh = _series(rows, "train/lsh")
    assert len(lsh) >= 35
    assert sum(lsh[-10:]) / 10 < sum(lsh[:10]) / 10
    gap = [
        p - n
        for p, n in zip(_series(rows, "train/sigmoid_pos"), _series(rows, "train/sigmoid_neg"))
    ]
    assert sum(gap[-10:]) / 10 > 0.2
    acc = _series(rows, "train/gch_acc")
    assert sum(acc) / len(acc) > 1 / 8 + 0.1  # chance is 1/N = 1/8
    assert (run / "encoder.safetensors").is_file()
    # Only the trunk is exported: no FEM, discriminators or global projection.
    from safetensors import safe_open

    with safe_open(str(run / "encoder.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("features.") for k in keys)
    card = (run / "MODEL_CARD.md").read_text()
    assert "drl" in card and "Seed: 0" in card
    assert "Deformation: sigma ~ U[0.03, 0.05]" in card and "global vector `preact`" in card
    assert math.isfinite(float(_series(rows, "train/mi")[-1]))


def test_resampled_original_is_a_sub_pixel_shift_of_the_image():
    module = DRL(_config())
    # A horizontal ramp: a shift by d columns adds exactly d away from the borders.
    ramp = torch.arange(64.0).expand(2, 3, 64, 64).contiguous()
    out = module.resample(ramp)
    diff = (out - ramp)[:, :, 2:-2, 2:-2]
    per_image = diff.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert (per_image.abs() <= 0.5 + 1e-5).all() and (per_image.abs() > 0).all()
