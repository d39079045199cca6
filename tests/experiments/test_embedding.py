"""Fig. 5 descriptors: test crops, pair scores against loops, t-SNE, and a run's embed folder."""

import json

import numpy as np
import pytest
import torch

from histodrl.experiments.embedding import (
    embed_run,
    glas_test_crops,
    pair_scores,
    tsne_2d,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=4, n_test_a=2, n_test_b=1, size=(96, 80), seed=3)
    return root


def _pair_scores_loops(g, g_hat):
    n = len(g)
    sim = [[float(np.dot(g[i], g_hat[j])) for j in range(n)] for i in range(n)]
    hits = sum(max(range(n), key=lambda j: (sim[i][j], -j)) == i for i in range(n))
    positive = sum(sim[i][i] for i in range(n)) / n
    negative = sum(sim[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return {
        "pair_retrieval_accuracy": hits / n,
        "positive_cosine": positive,
        "negative_cosine": negative,
    }


def test_pair_scores_match_explicit_loops():
    gen = torch.Generator().manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(9, 5, generator=gen), dim=1)
    g_hat = torch.nn.functional.normalize(g + 0.7 * torch.randn(9, 5, generator=gen), dim=1)
    ours = pair_scores(g, g_hat)
    reference = _pair_scores_loops(g.numpy().astype(np.float64), g_hat.numpy().astype(np.float64))
    assert ours == pytest.approx(reference, rel=1e-6)
    assert 0 < ours["pair_retrieval_accuracy"] < 1  # the case exercises hits and misses


def test_pair_scores_of_identical_descriptors_retrieve_every_pair():
    g = torch.eye(4)
    scores = pair_scores(g, g.clone())
    assert scores == {
        "pair_retrieval_accuracy": 1.0,
        "positive_cosine": 1.0,
        "negative_cosine": 0.0,
    }
    with pytest.raises(ValueError, match="N >= 2"):
        pair_scores(g[:1], g[:1])


def test_test_crops_cycle_through_test_images_and_are_seeded(glas):
    crops = glas_test_crops(glas, crop=48, count=5, seed=1)
    assert crops.shape == (5, 3, 48, 48) and crops.dtype == torch.uint8
    assert torch.equal(crops, glas_test_crops(glas, crop=48, count=5, seed=1))
    assert not torch.equal(crops, glas_test_crops(glas, crop=48, count=5, seed=2))
    # Crop 3 is from image 0 again (3 test images), at another position than crop 0.
    from histodrl.data.glas import GlasDataset

    first = GlasDataset(glas, parts=("testA", "testB"))[0]["image"]
    window = crops[3].permute(1, 2, 0).numpy()
    found = any(
        np.array_equal(first[t : t + 48, c : c + 48], window)
        for t in range(first.shape[0] - 47)
        for c in range(first.shape[1] - 47)
    )
    assert found


def test_crops_larger_than_an_image_are_reflect_padded(glas):
    crops = glas_test_crops(glas, crop=128, count=2, seed=0)
    assert crops.shape == (2, 3, 128, 128)


def test_tsne_is_seeded_and_two_dimensional():
    points = np.random.default_rng(0).normal(size=(12, 6))
    xy = tsne_2d(points, seed=0)
    assert xy.shape == (12, 2)
    np.testing.assert_allclose(xy, tsne_2d(points, seed=0))
    with pytest.raises(ValueError, match="P >= 4"):
        tsne_2d(points[:3], seed=0)


def test_embed_run_writes_unit_descriptors_and_scores(glas, tmp_path):
    from histodrl.cli import main

    run = tmp_path / "pretrain"
    args = ["pretrain", "--method", "drl", "--data", f"glas:{glas}", "--out", str(run)]
    args += ["--width", "0.125", "--crop", "32", "--max-steps", "1", "--batch-size", "4"]
    assert main([*args, "--num-workers", "0", "--no-progress", "--log-every", "1"]) == 0
    out = tmp_path / "embed"
    metrics = embed_run(run, glas, out, count=6, seed=0, accelerator="cpu")
    with np.load(out / "features.npz") as data:
        g, g_hat = data["g"], data["g_hat"]
    assert g.shape == g_hat.shape and g.shape[0] == 6
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["descriptor"] == "L2norm(GAP(FEM(tap)))" and metrics["crop"] == 32
    expected = pair_scores(torch.from_numpy(g), torch.from_numpy(g_hat))
    assert metrics["pair_retrieval_accuracy"] == pytest.approx(expected["pair_retrieval_accuracy"])
    # Same seed, same descriptors.
    again = embed_run(run, glas, tmp_path / "again", count=6, seed=0, accelerator="cpu")
    assert again["positive_cosine"] == pytest.approx(metrics["positive_cosine"], abs=1e-6)
