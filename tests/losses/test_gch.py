"""GCH hard and soft losses against explicit loops over i, j, and their bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histodrl.losses.gch import gch_hard_loss, gch_soft_loss, soft_targets


def _raw(n: int, c: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=generator, dtype=torch.float64)


def _unit(n: int, c: int, seed: int) -> torch.Tensor:
    return F.normalize(_raw(n, c, seed), dim=1)


def _reduce(losses: list[torch.Tensor], reduction: str) -> torch.Tensor:
    total = sum(losses[1:], losses[0])
    return total / len(losses) if reduction == "mean" else total


def _hard_loop(g, g_hat, temperature=1.0, reduction="mean"):
    """Eq. 8, one scalar at a time: -log K(x_i, x̂_i) / Σ_j K(x_i, x̂_j)."""
    n = g.shape[0]
    losses = []
    for i in range(n):
        logits = [torch.dot(g[i], g_hat[j]) / temperature for j in range(n)]
        log_denominator = torch.log(sum(torch.exp(v) for v in logits))
        losses.append(log_denominator - logits[i])
    return _reduce(losses, reduction)


def _soft_targets_loop(g, g_hat, weight_temperature=1.0):
    """Eq. 9 in descriptor space, one row at a time, re-normalised."""
    rows = []
    for i in range(g.shape[0]):
        kernels = [
            torch.exp(torch.dot(g[i], g_hat[j]) / weight_temperature) for j in range(len(g_hat))
        ]
        z = sum(kernels)
        average = sum(k / z * g_hat[j] for j, k in enumerate(kernels))
        rows.append(average / torch.sqrt(torch.dot(average, average)))
    return torch.stack(rows)


def _soft_loop(g, g_hat, temperature=1.0, weight_temperature=1.0, detach=False, reduction="mean"):
    """Eq. 10, one scalar at a time: -log K(x_i, x̃_i) / Σ_j K(x_j, x̃_i)."""
    targets = _soft_targets_loop(g, g_hat, weight_temperature)
    if detach:
        targets = targets.detach()
    n = g.shape[0]
    losses = []
    for i in range(n):
        logits = [torch.dot(targets[i], g[j]) / temperature for j in range(n)]
        log_denominator = torch.log(sum(torch.exp(v) for v in logits))
        losses.append(log_denominator - logits[i])
    return _reduce(losses, reduction)


@pytest.mark.parametrize(
    ("n", "c", "temperature", "reduction"),
    [(2, 3, 1.0, "mean"), (5, 4, 1.0, "sum"), (8, 16, 0.1, "mean"), (3, 7, 0.5, "sum")],
)
def test_hard_loss_and_gradients_match_explicit_loops(n, c, temperature, reduction) -> None:
    raw, raw_hat = _raw(n, c, 0).requires_grad_(True), _raw(n, c, 1).requires_grad_(True)

    def gradients(loss_fn):
        loss = loss_fn(F.normalize(raw, dim=1), F.normalize(raw_hat, dim=1))
        return (loss, *torch.autograd.grad(loss, (raw, raw_hat)))

    fast = gradients(lambda a, b: gch_hard_loss(a, b, temperature, reduction))
    loop = gradients(lambda a, b: _hard_loop(a, b, temperature, reduction))
    for got, expected in zip(fast, loop):
        torch.testing.assert_close(got, expected)
    # Nothing is detached: both sides get a gradient.
    assert fast[1].abs().sum() > 0 and fast[2].abs().sum() > 0


@pytest.mark.parametrize(
    ("n", "c", "temperature", "weight_temperature", "detach", "reduction"),
    [
        (2, 3, 1.0, 1.0, False, "mean"),
        (6, 5, 0.5, 0.3, False, "sum"),
        (4, 8, 0.1, 2.0, True, "mean"),
    ],
)
def test_soft_loss_and_gradients_match_explicit_loops(
    n, c, temperature, weight_temperature, detach, reduction
) -> None:
    raw, raw_hat = _raw(n, c, 2).requires_grad_(True), _raw(n, c, 3).requires_grad_(True)

    def gradients(loss_fn):
        loss = loss_fn(F.normalize(raw, dim=1), F.normalize(raw_hat, dim=1))
        grads = torch.autograd.grad(loss, (raw, raw_hat), allow_unused=True)
        return (loss, *(torch.zeros_like(raw) if grad is None else grad for grad in grads))

    fast = gradients(
        lambda a, b: gch_soft_loss(
            a, b, temperature, weight_temperature, detach_target=detach, reduction=reduction
        )
    )
    loop = gradients(
        lambda a, b: _soft_loop(a, b, temperature, weight_temperature, detach, reduction)
    )
    for got, expected in zip(fast, loop):
        torch.testing.assert_close(got, expected)


def test_soft_loss_with_detached_target_sends_no_gradient_to_deformed_descriptors() -> None:
    g, g_hat = _unit(5, 4, 4).requires_grad_(True), _unit(5, 4, 5).requires_grad_(True)
    gch_soft_loss(g, g_hat, detach_target=True).backward()
    assert g_hat.grad is None or torch.count_nonzero(g_hat.grad) == 0
    assert torch.count_nonzero(g.grad) > 0
    g_hat.grad = None
    gch_soft_loss(g, g_hat).backward()
    assert torch.count_nonzero(g_hat.grad) > 0


def test_soft_targets_match_loop_and_are_unit_rows() -> None:
    g, g_hat = _unit(4, 6, 6), _unit(7, 6, 7)
    targets = soft_targets(g, g_hat, weight_temperature=0.7)
    torch.testing.assert_close(targets, _soft_targets_loop(g, g_hat, 0.7))
    torch.testing.assert_close(targets.norm(dim=1), torch.ones(4, dtype=torch.float64))


def _separated_pairs(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal originals, each deformed copy a small tilt of its own original."""
    basis, _ = torch.linalg.qr(_raw(c, c, seed))
    g = basis[:n]
    g_hat = F.normalize(g + 0.2 * _unit(n, c, seed + 1), dim=1)
    return g, g_hat


def test_soft_target_reduces_to_hard_with_roles_swapped_when_weights_are_one_hot() -> None:
    g, g_hat = _separated_pairs(5, 8, 8)
    # Each original is clearly closest to its own copy, so a tiny τ_w makes W the identity.
    similarity = g @ g_hat.T
    assert torch.equal(similarity.argmax(dim=1), torch.arange(5))
    torch.testing.assert_close(soft_targets(g, g_hat, weight_temperature=1e-3), g_hat)
    soft = gch_soft_loss(g, g_hat, temperature=0.5, weight_temperature=1e-3)
    # t = ĝ: the logits t·gᵀ are the hard logits g·ĝᵀ transposed, i.e. the hard loss of (ĝ, g).
    torch.testing.assert_close(soft, gch_hard_loss(g_hat, g, temperature=0.5))
    torch.testing.assert_close(soft, _hard_loop(g_hat, g, 0.5))


def test_soft_target_equals_hard_when_weights_are_one_hot_and_logits_symmetric() -> None:
    g = _separated_pairs(4, 6, 9)[0]
    soft = gch_soft_loss(g, g.clone(), weight_temperature=1e-3)
    torch.testing.assert_close(soft, gch_hard_loss(g, g.clone()))


@pytest.mark.parametrize("loss", [gch_hard_loss, gch_soft_loss])
def test_sum_reduction_is_n_times_mean(loss) -> None:
    g, g_hat = _unit(6, 5, 10), _unit(6, 5, 11)
    torch.testing.assert_close(
        loss(g, g_hat, reduction="sum"), 6 * loss(g, g_hat, reduction="mean")
    )


def _simplex(n: int) -> torch.Tensor:
    """n unit vectors with pairwise dot product -1/(n-1)."""
    return F.normalize(torch.eye(n, dtype=torch.float64) - 1.0 / n, dim=1)


def test_hard_loss_per_term_bound_log_one_plus_n_minus_one_e_minus_two() -> None:
    # Each term is log(1 + Σ_{j≠i} exp(s_ij - s_ii)) ≥ log(1 + (N-1)e⁻²) since s ∈ [-1, 1].
    for n in (2, 3, 8, 16):
        bound = math.log1p((n - 1) * math.exp(-2))
        for seed in range(5):
            g, g_hat = _unit(n, 4, 20 + seed), _unit(n, 4, 40 + seed)
            assert gch_hard_loss(g, g_hat).item() > bound
    # Attained for N = 2 by antipodal pairs: g_1 = ĝ_1 = -g_2 = -ĝ_2.
    v = _unit(1, 3, 12)
    pair = torch.cat([v, -v])
    assert gch_hard_loss(pair, pair.clone()).item() == pytest.approx(math.log1p(math.exp(-2)))


def test_hard_loss_minimum_over_n_images_is_reached_by_a_regular_simplex() -> None:
    # The mean over N images is at least log(1 + (N-1)e^{-N/(N-1)}) (Jensen per row, then
    # N·Σs_ii - (Σg)·(Σĝ) ≤ N² by Cauchy-Schwarz); g = ĝ = a simplex reaches it. For N = 8
    # that is 1.173, well above the per-term bound 0.666.
    for n in (3, 8):
        minimum = math.log1p((n - 1) * math.exp(-n / (n - 1)))
        simplex = _simplex(n)
        assert gch_hard_loss(simplex, simplex.clone()).item() == pytest.approx(minimum)
        for seed in range(5):
            g, g_hat = _unit(n, n, 60 + seed), _unit(n, n, 80 + seed)
            assert gch_hard_loss(g, g_hat).item() > minimum
    assert round(math.log1p(7 * math.exp(-8 / 7)), 3) == 1.173
    assert round(math.log1p(7 * math.exp(-2)), 3) == 0.666


def test_non_negative_descriptors_cannot_go_below_log_one_plus_n_minus_one_over_e() -> None:
    # METHOD.md (b), "Correction (measured)": with F_G pooled from post-ReLU maps every cosine is
    # in [0, 1], so each term is at least log(1 + (N-1)/e) (1.274 for N = 8, against the simplex's
    # 1.173), reached by orthogonal one-hot descriptors. Descriptors of either sign go lower.
    for n in (3, 8):
        floor = math.log1p((n - 1) / math.e)
        one_hot = torch.eye(n, dtype=torch.float64)
        assert gch_hard_loss(one_hot, one_hot.clone()).item() == pytest.approx(floor)
        for seed in range(5):
            g, g_hat = _unit(n, n, 100 + seed).abs(), _unit(n, n, 120 + seed).abs()
            assert gch_hard_loss(g, g_hat).item() >= floor
        simplex = _simplex(n)
        assert gch_hard_loss(simplex, simplex.clone()).item() < floor
    assert round(math.log1p(7 / math.e), 3) == 1.274


def test_descriptors_that_only_tell_original_from_deformed_give_log_n() -> None:
    # Every original at u and every deformed copy at -u (measured late in short DRL runs at small
    # lambda, when the LSH term's deformation cue takes over the pooled features): chance level.
    u = _unit(1, 5, 18)
    g, g_hat = u.expand(8, 5), -u.expand(8, 5)
    assert gch_hard_loss(g, g_hat).item() == pytest.approx(math.log(8))


def test_hard_and_soft_losses_are_log_n_for_identical_descriptors() -> None:
    g = _unit(1, 4, 13).expand(6, 4)
    assert gch_hard_loss(g, g.clone()).item() == pytest.approx(math.log(6))
    assert gch_soft_loss(g, g.clone()).item() == pytest.approx(math.log(6))


@pytest.mark.parametrize("loss", [gch_hard_loss, gch_soft_loss])
def test_single_image_loss_is_zero(loss) -> None:
    g = _unit(1, 4, 14)
    assert loss(g, _unit(1, 4, 15)).item() == 0.0


@pytest.mark.parametrize("loss", [gch_hard_loss, gch_soft_loss])
def test_gather_distributed_without_process_group_is_plain(loss) -> None:
    g, g_hat = _unit(4, 3, 16), _unit(4, 3, 17)
    torch.testing.assert_close(loss(g, g_hat, gather_distributed=True), loss(g, g_hat))


def test_losses_run_in_float32() -> None:
    g, g_hat = _unit(4, 3, 18), _unit(4, 3, 19)
    for loss in (gch_hard_loss, gch_soft_loss):
        got = loss(g.float(), g_hat.float())
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(loss(g, g_hat).item(), rel=1e-5)


@pytest.mark.parametrize("loss", [gch_hard_loss, gch_soft_loss])
@pytest.mark.parametrize(
    ("kwargs", "shapes", "message"),
    [
        ({}, ((4, 3), (5, 3)), "expected two"),
        ({}, ((4,), (4,)), "expected two"),
        ({}, ((0, 3), (0, 3)), "at least one row"),
        ({"temperature": 0.0}, ((4, 3), (4, 3)), "temperature=0.0"),
        ({"temperature": float("nan")}, ((4, 3), (4, 3)), "temperature=nan"),
        ({"reduction": "none"}, ((4, 3), (4, 3)), "reduction='none'"),
    ],
)
def test_gch_losses_reject_bad_arguments_naming_the_value(loss, kwargs, shapes, message) -> None:
    g, g_hat = (torch.ones(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        loss(g, g_hat, **kwargs)


def test_soft_loss_rejects_bad_weight_temperature() -> None:
    g = _unit(3, 2, 21)
    with pytest.raises(ValueError, match="weight_temperature=-1.0"):
        gch_soft_loss(g, g, weight_temperature=-1.0)
    with pytest.raises(ValueError, match="weight_temperature=inf"):
        soft_targets(g, g, weight_temperature=float("inf"))
    with pytest.raises(ValueError, match=r"\(M, C\)"):
        soft_targets(g, torch.ones(3, 5, dtype=torch.float64))
