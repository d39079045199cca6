"""The pretext baselines: each trains on a fixed batch with a falling loss and exports a loadable trunk;
their labels, corruptions and losses are checked against loops, numpy/scipy or closed forms."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import comb
from skimage.color import rgb2lab

from histodrl.data.synth_glas import render_glas_image
from histodrl.errors import UserInputError
from histodrl.nn import save_encoder, vgg19_bn
from histodrl.pretext import method_class
from histodrl.pretext.colorization import ab_bins, rebalancing_weights, rgb_to_lab, soft_encode
from histodrl.pretext.dim import DIM
from histodrl.pretext.exemplar import Exemplar, SeedItems, affine_warp, random_affine
from histodrl.pretext.genesis import (
    bezier_intensity,
    genesis_corrupt,
    local_pixel_shuffling,
    painting_mask,
    shuffle_blocks,
)
from histodrl.pretext.inpainting import (
    ChannelWiseFC,
    Inpainting,
    centre_region,
    hide_centre,
    overlap_weights,
)
from histodrl.pretext.prior import adversarial_losses
from histodrl.pretext.rotation import Rotation, rotations_of
from histodrl.pretext.vae import gaussian_kl

BASELINES = ["dim", "rotation", "colorization", "inpainting", "exemplar", "vae", "genesis"]
N = 4


def _config(method, **over):
    base = {
        "method": method,
        "data": "folder:/nonexistent",
        "crop": 64,
        "width": 0.125,
        "arch": "vgg19_bn",
        "seed": 0,
        "batch_size": N,
        "lr": 1e-3,
        "tap": "conv4_4",
        "gamma": 0.1,
        "prior_penalty": 0.0,
        "exemplar_classes": 16,
        "inpainting_adversarial": 0.0,
        "log_every": 1,
        "compile": False,
        "out": "unused",
    }
    base.update(over)
    return base


@pytest.fixture(scope="module")
def tissue_batch():
    """N generated H&E-like images, uint8 (N, 3, 64, 64), as the loader delivers them."""
    images = [
        render_glas_image(np.random.default_rng(i), (64, 64), malignant=i % 2 == 0)[0]
        for i in range(N)
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _loader_batch(method, images):
    if method == "exemplar":
        return {"image": images, "index": torch.tensor([3, 0, 7, 12])}
    return images


# ------------------------------------------------------------------------------------------------
# Every method: training lowers the loss, and the trunk exports like DRL's
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINES)
def test_a_few_steps_on_a_fixed_batch_lower_the_loss_and_the_export_loads(
    method, tissue_batch, tmp_path
):
    torch.manual_seed(0)
    module = method_class(method)(_config(method))
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    # DIM's total includes the adversarial prior game; its MI term is what must improve.
    key = "local" if method == "dim" else "loss"
    losses = []
    for _ in range(4):
        # The step generator depends on (seed, step, rank): with no trainer the step stays 0, so
        # every step draws the same augmentation and corruption and the objective is fixed.
        x = module.on_after_batch_transfer(_loader_batch(method, tissue_batch), 0)
        loss, logs = module.pretext_step(x)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float({"loss": loss, **logs}[key].detach()))
    assert losses[-1] < losses[0], losses

    path = tmp_path / "encoder.safetensors"
    save_encoder(module.encoder, path, {"method": method})
    trunk = vgg19_bn(width=0.125)
    trunk.load_state_dict(load_file(path))
    for name, value in module.encoder.state_dict().items():
        assert torch.equal(trunk.state_dict()[name], value), name


@pytest.mark.parametrize("method", BASELINES)
def test_every_method_is_registered_and_trains_the_trunk_up_to_its_tap(method):
    torch.manual_seed(0)
    module = method_class(method)(_config(method))
    expected = "conv4_4" if method == "dim" else "pool5"
    assert module.tap == expected
    convs = [m for m in module.encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].weight.requires_grad
    assert convs[-1].weight.requires_grad == (expected == "pool5")


# ------------------------------------------------------------------------------------------------
# DIM
# ------------------------------------------------------------------------------------------------


def test_dim_negatives_pair_each_global_vector_with_the_next_images_local_map():
    torch.manual_seed(0)
    module = DIM(_config("dim"))
    seen = {}
    forward_shared = module.local_d.forward_shared

    def spy(*args):
        seen.update(args=args)
        return forward_shared(*args)

    module.local_d.forward_shared = spy
    x = torch.rand(N, 3, 64, 64)
    module.pretext_step(x)
    local, context = seen["args"]
    e = module.encode(module.prepare(x), ["conv4_4"])["conv4_4"]
    pos, neg = local[:N], local[N:]
    assert torch.allclose(pos, e, atol=1e-5)
    for i in range(N):
        j = (i + 1) % N
        assert j != i
        assert torch.allclose(neg[i], e[j], atol=1e-5)  # another batch index's local map
        assert not torch.allclose(neg[i], e[i], atol=1e-3)
    # Positive and negative of row i share image i's global vector: L2norm(GAP(e_i)), tiled
    # (forward_shared pairs row i of each group with row i of the shared part).
    g = torch.nn.functional.normalize(e.mean(dim=(2, 3)), dim=1)
    assert context.shape == (N, g.shape[1], 1, 1)
    assert torch.allclose(context[:, :, 0, 0], g, atol=1e-5)


def test_dim_without_prior_has_no_prior_discriminator():
    torch.manual_seed(0)
    module = DIM(_config("dim", gamma=0.0))
    assert module.prior_d is None
    loss, logs = module.pretext_step(torch.rand(N, 3, 64, 64))
    assert "prior" not in logs and torch.allclose(loss, logs["local"])


def test_adversarial_losses_train_each_player_only_with_its_own_loss():
    torch.manual_seed(0)
    disc = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    source = torch.randn(5, 3, requires_grad=True)
    fake = source * 2
    gen, d = adversarial_losses(disc, torch.rand(5, 3), fake, penalty=1.0)
    gen.backward(retain_graph=True)
    assert source.grad is not None and source.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())
    source.grad = None
    d.backward()
    assert source.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    # The generator's loss is the non-saturating one: mean softplus(-D(fake)).
    expected = torch.nn.functional.softplus(-disc(fake)).mean()
    assert torch.allclose(gen, expected)


# ------------------------------------------------------------------------------------------------
# Rotation
# ------------------------------------------------------------------------------------------------


def test_rotation_batch_holds_every_image_in_four_rotations_with_their_labels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    images, labels = rotations_of(x)
    assert images.shape == (8, 1, 3, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        for i in range(2):
            # np.rot90 turns counter-clockwise.
            expected = np.rot90(x[i, 0].numpy(), k).copy()
            assert np.array_equal(images[k * 2 + i, 0].numpy(), expected)
    # One explicit case: a quarter turn counter-clockwise moves the top-right corner to top-left.
    assert images[2, 0, 0, 0] == x[0, 0, 0, 2]


def test_rotation_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotations_of(torch.zeros(1, 3, 4, 5))


def test_rotation_augments_with_horizontal_flips_only():
    torch.manual_seed(0)
    module = Rotation(_config("rotation"))
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    out = module.on_after_batch_transfer(x, 0)
    xf = x.float() / 255
    flipped = [torch.equal(out[i], xf[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(out[i], xf[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


# ------------------------------------------------------------------------------------------------
# Exemplar
# ------------------------------------------------------------------------------------------------


def test_exemplar_seed_items_are_k_distinct_items_each_returned_with_its_class():
    data = [torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(50)]
    seeds = SeedItems(data, 10, seed=3)
    assert len(seeds) == 10
    assert len(set(seeds.indices)) == 10 and seeds.indices == sorted(seeds.indices)
    for c in range(10):
        item = seeds[c]
        assert item["index"] == c
        assert torch.equal(item["image"], data[seeds.indices[c]])
    assert SeedItems(data, 10, seed=3).indices == seeds.indices
    assert SeedItems(data, 10, seed=4).indices != seeds.indices


def test_exemplar_refuses_more_classes_than_items():
    with pytest.raises(UserInputError, match="--exemplar-classes 60"):
        SeedItems([torch.zeros(3, 2, 2)] * 50, 60, seed=0)


def test_exemplar_step_uses_the_classes_delivered_with_the_batch(tissue_batch):
    torch.manual_seed(0)
    module = Exemplar(_config("exemplar"))
    with pytest.raises(RuntimeError, match="on_after_batch_transfer"):
        module.pretext_step(torch.rand(N, 3, 64, 64))
    labels = torch.tensor([3, 0, 7, 12])
    x = module.on_after_batch_transfer({"image": tissue_batch, "index": labels}, 0)
    assert torch.equal(module.batch_labels, labels)
    captured = {}
    module.classifier.register_forward_hook(lambda m, a, out: captured.update(logits=out))
    loss, _ = module.pretext_step(x)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(captured["logits"], labels))
    assert module.batch_labels is None  # a step cannot reuse an earlier batch's classes


def test_affine_warp_quarter_turn_and_pixel_shift_match_rot90_and_roll():
    x = torch.rand(1, 3, 8, 8)
    turned = affine_warp(x, torch.tensor([math.pi / 2]), torch.tensor([1.0]), torch.zeros(1, 2))
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    shifted = affine_warp(x, torch.zeros(1), torch.ones(1), torch.tensor([[2 * 2 / 8, 0.0]]))
    assert torch.allclose(shifted[..., :6], x[..., 2:], atol=1e-5)  # content moved 2 px left
    zoomed = affine_warp(x, torch.zeros(1), torch.tensor([2.0]), torch.zeros(1, 2))
    # A zoom of 2 shows the central half: output pixel 1 (centre 1.5 of 8) samples input 2.25.
    near = 0.75 * x[..., 2, :] + 0.25 * x[..., 3, :]
    assert torch.allclose(zoomed[..., 1, 1], 0.75 * near[..., 2] + 0.25 * near[..., 3], atol=1e-5)


def test_random_affine_is_reproducible_per_generator_and_differs_per_image():
    x = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1).contiguous()  # three copies of one image
    a = random_affine(x, torch.Generator().manual_seed(1))
    b = random_affine(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


# ------------------------------------------------------------------------------------------------
# Colorization
# ------------------------------------------------------------------------------------------------


def test_rgb_to_lab_matches_scikit_image():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.0  # black, below the sRGB and Lab thresholds
    ours = rgb_to_lab(x).permute(0, 2, 3, 1).numpy()
    reference = rgb2lab(x.permute(0, 2, 3, 1).numpy().astype(np.float64))
    assert np.allclose(ours, reference, atol=2e-3)


def test_ab_bins_are_the_grid_cells_the_srgb_gamut_reaches():
    bins = ab_bins().numpy()
    assert bins.shape == (261, 2)
    assert np.all(bins % 10 == 0)
    g = np.linspace(0, 1, 33)
    rgb = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 1, 3)
    ab = rgb2lab(rgb).reshape(-1, 3)[:, 1:]
    cells = {tuple(c) for c in (np.round(ab / 10) * 10).astype(int)}
    assert cells <= {tuple(b) for b in bins.astype(int)}
    # Grey is a bin; a saturated sRGB red's ab (a ≈ 80, b ≈ 67) is nearest to (80, 70).
    assert (0, 0) in {tuple(b) for b in bins.astype(int)}


def test_soft_encoding_matches_a_loop_over_pixels():
    bins = ab_bins()
    ab = torch.tensor([[3.0, -4.0], [51.5, 12.3], [0.0, 0.0], [-33.3, 47.5]])  # no ties at 5th
    targets, nearest = soft_encode(ab, bins)
    for p in range(ab.shape[0]):
        d = np.linalg.norm(bins.numpy() - ab[p].numpy(), axis=1)
        five = np.argsort(d)[:5]
        w = np.exp(-(d[five] ** 2) / (2 * 5.0**2))
        expected = np.zeros(len(bins))
        expected[five] = w / w.sum()
        assert np.allclose(targets[p].numpy(), expected, atol=1e-6)
        assert nearest[p] == five[0]


def test_rebalancing_weights_follow_eq_4_and_average_to_one():
    counts = torch.tensor([10.0, 0.0, 5.0, 85.0], dtype=torch.float64)
    w = rebalancing_weights(counts, lam=0.5)
    p = counts.numpy() / 100
    raw = 1 / (0.5 * p + 0.5 / 4)
    assert np.allclose(w.numpy(), raw / (p * raw).sum())
    assert math.isclose(float((w * counts / 100).sum()), 1.0)
    assert w[1] > w[0] > w[3]  # rarer colours weigh more
    assert torch.allclose(rebalancing_weights(counts, lam=1.0), torch.ones(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# Inpainting
# ------------------------------------------------------------------------------------------------


def test_inpainting_hides_the_inner_centre_with_the_mean_colour_and_weighs_the_overlap():
    region, o = centre_region(64)
    assert (region.start, region.stop, o) == (16, 48, 2)
    x = torch.rand(2, 3, 64, 64)
    hidden = hide_centre(x)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    inner = torch.zeros(64, 64, dtype=torch.bool)
    inner[18:46, 18:46] = True
    assert torch.allclose(hidden[:, :, inner], mean.expand(3, 28, 28).reshape(3, -1))
    assert torch.equal(hidden[:, :, ~inner], x[:, :, ~inner])
    w = overlap_weights(32, 2)
    assert w[2:30, 2:30].eq(1).all() and w.sum() == 28 * 28 + 10 * (32 * 32 - 28 * 28)


def test_channel_wise_fc_matches_a_loop_over_channels():
    torch.manual_seed(0)
    layer = ChannelWiseFC(3, 2, 3)
    x = torch.randn(2, 3, 2, 3)
    y = layer(x)
    for n in range(2):
        for c in range(3):
            expected = layer.weight[c] @ x[n, c].reshape(6) + layer.bias[c]
            assert torch.allclose(y[n, c].reshape(6), expected, atol=1e-6)


def test_inpainting_adversarial_term_adds_a_discriminator_trained_on_its_own_loss(tissue_batch):
    torch.manual_seed(0)
    module = Inpainting(_config("inpainting", inpainting_adversarial=0.001))
    x = module.on_after_batch_transfer(tissue_batch, 0)
    loss, logs = module.pretext_step(x)
    assert set(logs) == {"reconstruction", "adversarial", "discriminator"}
    expected = logs["reconstruction"] + 0.001 * logs["adversarial"] + logs["discriminator"]
    assert torch.allclose(loss, expected)
    logs["adversarial"].backward()
    assert all(p.grad is None for p in module.discriminator.parameters())
    assert module.decoder.out.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(10), torch.randn(10)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(10), torch.ones(10))
    assert torch.allclose(
        gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p), atol=1e-6
    )


# ------------------------------------------------------------------------------------------------
# Models Genesis corruptions
# ------------------------------------------------------------------------------------------------


def _genesis_nonlinear_reference(x, points, flip, n_times):
    """Models Genesis' nonlinear_transformation (utils.py), with its random draws passed in."""
    points = [[0, 0], *points, [1, 1]]
    t = np.linspace(0.0, 1.0, n_times)
    poly = np.array([comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    xvals = np.dot(np.array([p[0] for p in points]), poly)
    yvals = np.dot(np.array([p[1] for p in points]), poly)
    if flip:
        xvals = np.sort(xvals)
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals)


@pytest.mark.parametrize("flip", [False, True])
def test_bezier_intensity_matches_the_models_genesis_code(flip):
    rng = np.random.default_rng(0)
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    control = torch.from_numpy(rng.random((3, 2, 2)))
    out = bezier_intensity(x, control, torch.full((3,), flip), steps=500)
    for n in range(3):
        expected = _genesis_nonlinear_reference(
            x[n].double().numpy(), control[n].tolist(), flip, 500
        )
        assert np.allclose(out[n].numpy(), expected, atol=1e-5)


def test_shuffle_blocks_permutes_each_selected_block_within_itself_and_keeps_the_rest():
    gen = torch.Generator().manual_seed(0)
    n, h, w = 2, 7, 9
    x = torch.rand(n, 2, h, w, generator=gen)
    block = torch.tensor([[3, 2], [2, 4]])
    offset = torch.tensor([[1, 0], [0, 3]])
    selected = torch.rand(n, (h + 1) * (w + 1), generator=gen) < 0.5
    out, written = shuffle_blocks(x, block, offset, selected, gen)
    moved_somewhere = False
    for i in range(n):
        blocks = {}
        for r in range(h):
            for c in range(w):
                key = (
                    (r + offset[i, 0].item()) // block[i, 0].item(),
                    (c + offset[i, 1].item()) // block[i, 1].item(),
                )
                blocks.setdefault(key, []).append((r, c))
        for (br, bc), pixels in blocks.items():
            chosen = bool(selected[i, br * (w + 1) + bc])
            src = torch.stack([x[i, :, r, c] for r, c in pixels])
            dst = torch.stack([out[i, :, r, c] for r, c in pixels])
            assert all(bool(written[i, 0, r, c]) == chosen for r, c in pixels)
            if not chosen:
                assert torch.equal(src, dst)
                continue
            # Same multiset of pixel vectors (channels move together).
            key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
            assert key(src) == key(dst)
            moved_somewhere |= not torch.equal(src, dst)
    assert moved_somewhere


def test_local_pixel_shuffling_takes_every_pixel_from_near_its_own_place():
    h = w = 30  # max block side 3
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(2, 3, 1, 1)
    x[1] += h * w  # unique values: each output value names its source pixel and image
    out = local_pixel_shuffling(x, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], out[:, 1])  # channels move together
    src = out[:, 0].long()
    for i in range(2):
        source = src[i] - i * h * w
        assert source.min() >= 0 and source.max() < h * w  # from the same image
        rows, cols = source // w, source % w
        assert (rows - torch.arange(h)[:, None]).abs().max() < 3
        assert (cols - torch.arange(w)[None, :]).abs().max() < 3
    assert (out != x).float().mean() > 0.3


def test_painting_masks_respect_the_models_genesis_box_sizes():
    side, n = 70, 200
    gen = torch.Generator().manual_seed(0)
    outpaint = torch.arange(n) % 2 == 0
    mask = painting_mask(n, side, outpaint, gen, "cpu")[:, 0]
    border = torch.ones(side, side, dtype=torch.bool)
    border[3:-3, 3:-3] = False
    for i in range(n):
        if outpaint[i]:
            kept = ~mask[i]
            assert mask[i][border].all()  # boxes start at >= 3 and end <= side - 3
            rows, cols = kept.any(1).nonzero(), kept.any(0).nonzero()
            # At least one kept box of side >= S - 4S/7 = 30 along each axis.
            assert int(rows.max() - rows.min()) + 1 >= side - 4 * side // 7
            assert int(cols.max() - cols.min()) + 1 >= side - 4 * side // 7
        else:
            assert not mask[i][border].any()
            assert mask[i].sum() <= 5 * (side // 3) ** 2
    inpainted = mask[~outpaint].flatten(1).any(1).float().mean()
    assert 0.85 < inpainted < 1.0  # the first box is drawn with rate 0.95


def test_genesis_corruption_is_reproducible_and_stays_in_the_unit_range():
    x = torch.rand(4, 3, 32, 32)
    a = genesis_corrupt(x, torch.Generator().manual_seed(5))
    b = genesis_corrupt(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_genesis_refuses_a_crop_its_unet_cannot_take():
    with pytest.raises(UserInputError, match="--crop 48"):
        method_class("genesis")(_config("genesis", crop=48))
