"""``pretrain --monitor``: probes of the frozen encoder while it pretrains, and nothing else."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from histodrl.cli import main
from histodrl.pretext import monitor as M

TINY = ["--width", "0.125", "--crop", "64", "--batch-size", "4", "--num-workers", "0"]


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=4, n_test_a=1, n_test_b=1, size=(96, 96), seed=0)
    return root


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """Two classes of small PNGs (reddish, bluish), 8 each."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 90, 90)), ("blue", (90, 90, 200))):
        (root / name).mkdir()
        for i in range(8):
            tile = np.clip(np.array(colour) + rng.normal(0, 50, (40, 40, 3)), 0, 255)
            Image.fromarray(tile.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _pretrain(data, run, *extra):
    return ["pretrain", "--data", f"glas:{data}", "--out", str(run), *TINY, "--no-progress",
            *extra]  # fmt: skip


def _monitor_rows(run):
    if not (run / "metrics.csv").is_file():
        return []
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if any(k.startswith("monitor/") and v for k, v in r.items())]


# -- the probes --------------------------------------------------------------------------------


def _brute_force_knn(fit_x, fit_y, query_x, num_classes, k):
    def cosine(a, b):
        dot = sum(p * q for p, q in zip(a, b, strict=True))
        return dot / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

    out = []
    for q in query_x.tolist():
        sims = sorted(
            ((cosine(q, f), int(y)) for f, y in zip(fit_x.tolist(), fit_y.tolist(), strict=True)),
            reverse=True,
        )[:k]
        votes = [0] * num_classes
        summed = [0.0] * num_classes
        for s, y in sims:
            votes[y] += 1
            summed[y] += s
        best = max(range(num_classes), key=lambda c: (votes[c], summed[c]))
        out.append(best)
    return out


@pytest.mark.parametrize("k", [1, 4, 10])
def test_knn_matches_a_brute_force_loop(k):
    gen = torch.Generator().manual_seed(k)
    fit_x = torch.randn(40, 6, generator=gen)
    fit_y = torch.randint(0, 3, (40,), generator=gen)
    query = torch.randn(25, 6, generator=gen)
    got = M.knn_predict(fit_x, fit_y, query, num_classes=3, k=k)
    assert got.tolist() == _brute_force_knn(fit_x, fit_y, query, 3, k)


def test_logistic_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 8))
    y = rng.integers(0, 3, 90)
    x = centres[y] + rng.normal(0, 1.0, (90, 8))
    l2 = 1e-2
    weight, bias = M.fit_logistic(
        torch.from_numpy(x), torch.from_numpy(y), 3, l2=l2, iterations=500
    )
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(x, y)
    probs = torch.softmax(torch.from_numpy(x) @ weight.T + bias, dim=1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(weight.numpy(), ref.coef_, atol=1e-3)
    # float32 (as the monitor runs it) gives sklearn's predictions
    w32, b32 = M.fit_logistic(torch.from_numpy(x).float(), torch.from_numpy(y), 3, l2=l2)
    pred32 = (torch.from_numpy(x).float() @ w32.T + b32).argmax(dim=1).numpy()
    assert (pred32 == ref.predict(x)).mean() >= 0.99


def test_pixel_grid_samples_the_bilinearly_upsampled_map():
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 3, 6, 6, generator=gen)
    pixels = torch.randint(0, 48, (2, 50, 2), generator=gen)
    pixels[0, :4] = torch.tensor([[0, 0], [47, 47], [0, 47], [47, 0]])  # the borders
    up = F.interpolate(fmap, size=(48, 48), mode="bilinear", align_corners=False)
    want = torch.stack([up[n, :, pixels[n, :, 0], pixels[n, :, 1]].T for n in range(2)])
    got = F.grid_sample(
        fmap, M.pixel_grid(pixels, 48), mode="bilinear", padding_mode="border", align_corners=False
    )[..., 0].permute(0, 2, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_stratified_sample_halves_every_class():
    labels = np.array([0] * 30 + [1] * 6 + [2] * 1)
    fit, score = M._stratified(labels, 12, np.random.default_rng(0))
    assert not set(fit) & set(score)
    taken = np.bincount(labels[fit + score], minlength=3)
    assert taken.sum() in (12, 13, 14) and taken[1] >= 2 and taken[2] == 1
    assert set(labels[fit]) == {0, 1, 2} and set(labels[score]) == {0, 1}


# -- the evaluation changes nothing ------------------------------------------------------------


@pytest.mark.parametrize("source", ["classes", "masks"])
def test_evaluation_leaves_the_encoder_as_it_was(source, glas, class_folder):
    from histodrl.nn import build_encoder

    spec = f"folder:{class_folder}" if source == "classes" else f"glas:{glas}"
    sample = M.load_monitor_sample(spec, crop=64, images=8)
    assert sample.task == source
    torch.manual_seed(0)
    encoder = build_encoder("vgg19_bn", 0.125)
    encoder.train()
    encoder.features[1].eval()  # a submodule in its own mode stays so
    # BatchNorm statistics as training leaves them (not the fresh 0 / 1)
    with torch.no_grad():
        encoder(torch.rand(4, 3, 64, 64))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    modes = {name: m.training for name, m in encoder.named_modules()}
    rng_before = torch.get_rng_state()

    scores = M.evaluate(encoder, sample, M.monitor_blocks("conv4_4"))

    assert list(scores) == ["conv3_4", "conv4_4", "pool5"]
    metric = "knn_acc" if source == "classes" else "pixel_dice"
    assert all(0.0 <= s[metric] <= 1.0 for s in scores.values())
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert {name: m.training for name, m in encoder.named_modules()} == modes
    assert all(p.grad is None for p in encoder.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_bad_monitor_is_one_line_before_anything_is_written(glas, tmp_path, capsys):
    run = tmp_path / "run"
    for spec, expected in (
        (f"wsi:{glas}", "labelled"),
        (f"folder:{tmp_path / 'no'}", "does not exist"),
    ):
        status = main(_pretrain(glas, run, "--max-steps", "1", "--monitor", spec))
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1, err
        assert "--monitor" in err[0] and expected in err[0]
        assert not run.exists()


# -- pretraining with a monitor ----------------------------------------------------------------


def test_monitor_is_logged_changes_no_weight_and_may_join_on_resume(glas, class_folder, tmp_path):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    monitor = ["--monitor", f"folder:{class_folder}", "--monitor-images", "12"]
    assert main(_pretrain(glas, plain, "--max-steps", "4")) == 0
    assert main(_pretrain(glas, watched, "--max-steps", "4", "--monitor-every", "2", *monitor)) == 0

    rows = _monitor_rows(watched)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    for key in ("monitor/knn_acc", "monitor/linear_acc", "monitor/knn_acc_conv3_4",
                "monitor/linear_acc_pool5"):  # fmt: skip
        assert all(0.0 <= float(r[key]) <= 1.0 for r in rows), key
    # DRL's tap is the headline
    assert rows[-1]["monitor/knn_acc"] == rows[-1]["monitor/knn_acc_conv4_4"]
    assert (watched / "figures" / "monitor.png").read_bytes()[:4] == b"\x89PNG"
    assert not _monitor_rows(plain) and not (plain / "figures" / "monitor.png").exists()

    # the same weights (trunk, BatchNorm statistics, heads) with and without the monitor
    a, b = load_file(plain / "encoder.safetensors"), load_file(watched / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    cb = torch.load(watched / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)

    # a runtime option: --resume may add a monitor (here of masks: the pixel probe)
    masks = ["--monitor", f"glas:{glas}", "--monitor-images", "8", "--monitor-every", "4"]
    assert main([*_pretrain(glas, plain, "--max-steps", "7", *masks), "--resume"]) == 0
    rows = _monitor_rows(plain)
    assert [int(r["step"]) for r in rows] == [4, 7]
    assert all(0.0 <= float(r["monitor/pixel_dice"]) <= 1.0 for r in rows)
    assert all(not r.get("monitor/knn_acc") for r in rows)
    assert M.read_monitor_curves(plain)["monitor/pixel_dice_conv3_4"][0] == [4, 7]
    assert (plain / "figures" / "monitor.png").is_file()


def test_calibrated_scores_do_not_depend_on_the_encoders_running_statistics(glas):
    """The probe normalises with statistics of the fit images, not those the encoder carries: the
    same weights with fresh (0 / 1) and with trained running statistics score the same, and the
    uncalibrated evaluation tells them apart."""
    from histodrl.nn import build_encoder

    sample = M.load_monitor_sample(f"glas:{glas}", crop=64, images=8)
    fresh = build_encoder("vgg19_bn", 0.125, generator=torch.Generator().manual_seed(0))
    trained = build_encoder("vgg19_bn", 0.125, generator=torch.Generator().manual_seed(0))
    trained.train()
    with torch.no_grad():
        for _ in range(3):
            trained(torch.rand(4, 3, 64, 64) * 0.5 + 0.25)
    assert not torch.equal(fresh.features[1].running_mean, trained.features[1].running_mean)
    blocks = M.monitor_blocks("conv4_4")
    a, b = M.evaluate(fresh, sample, blocks), M.evaluate(trained, sample, blocks)
    for block in blocks:
        assert a[block]["pixel_dice"] == pytest.approx(b[block]["pixel_dice"], abs=1e-6)
    raw_a = M.evaluate(fresh, sample, blocks, calibrate=False)
    raw_b = M.evaluate(trained, sample, blocks, calibrate=False)
    assert any(raw_a[k]["pixel_dice"] != raw_b[k]["pixel_dice"] for k in blocks)
    # the encoder itself keeps its statistics
    assert torch.equal(
        fresh.features[1].running_var, torch.ones_like(fresh.features[1].running_var)
    )
