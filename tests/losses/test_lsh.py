"""LSH (JSD) loss, its literal eq. 6 reading, the MI estimate and the DIM negatives, recomputed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histodrl.losses.lsh import jsd_mi_estimate, lsh_loss, lsh_loss_literal, roll_negatives


def _logits(shape: tuple[int, ...], seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


def _softplus_np(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def test_lsh_loss_matches_numpy_softplus_means_over_all_elements() -> None:
    pos, neg = _logits((2, 1, 4, 4), 0), _logits((3, 1, 4, 4), 1)
    expected = _softplus_np(-pos.numpy()).mean() + _softplus_np(neg.numpy()).mean()
    assert lsh_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_lsh_loss_equals_binary_cross_entropy_with_logits() -> None:
    pos, neg = _logits((4, 1, 8, 8), 2), _logits((4, 1, 8, 8), 3)
    bce = F.binary_cross_entropy_with_logits(
        pos, torch.ones_like(pos)
    ) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    torch.testing.assert_close(lsh_loss(pos, neg), bce)


def test_lsh_loss_gradient_is_minus_sigmoid_of_minus_t_over_count() -> None:
    pos = _logits((2, 1, 3, 3), 4).requires_grad_(True)
    neg = _logits((2, 1, 3, 3), 5).requires_grad_(True)
    lsh_loss(pos, neg).backward()
    # d sp(-T)/dT = -σ(-T) and d sp(T)/dT = σ(T), each divided by its element count.
    torch.testing.assert_close(pos.grad, -torch.sigmoid(-pos.detach()) / pos.numel())
    torch.testing.assert_close(neg.grad, torch.sigmoid(neg.detach()) / neg.numel())


def test_jsd_mi_estimate_is_two_log_two_minus_lsh_and_zero_at_chance() -> None:
    pos, neg = _logits((2, 1, 4, 4), 6), _logits((2, 1, 4, 4), 7)
    assert jsd_mi_estimate(pos, neg).item() == pytest.approx(
        2 * math.log(2) - lsh_loss(pos, neg).item(), rel=1e-12
    )
    zeros = torch.zeros(2, 1, 4, 4)
    assert lsh_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert jsd_mi_estimate(zeros, zeros).item() == pytest.approx(0.0, abs=1e-7)
    # A perfect discriminator reaches the estimator's ceiling 2·log 2.
    assert jsd_mi_estimate(zeros + 40, zeros - 40).item() == pytest.approx(2 * math.log(2))


def _literal_np(d_pos: np.ndarray, d_neg: np.ndarray) -> np.ndarray:
    """Eq. 6 as a function of the sigmoid outputs D ∈ [0, 1]."""
    return np.log(_softplus_np(-d_pos)) + np.log(_softplus_np(d_neg))


def test_lsh_loss_literal_matches_numpy_with_d_equal_sigmoid_t() -> None:
    pos, neg = _logits((2, 1, 4, 4), 8), _logits((2, 1, 4, 4), 9)
    d_pos, d_neg = 1 / (1 + np.exp(-pos.numpy())), 1 / (1 + np.exp(-neg.numpy()))
    expected = np.log(_softplus_np(-d_pos)).mean() + np.log(_softplus_np(d_neg)).mean()
    assert lsh_loss_literal(pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_lsh_loss_literal_minimum_is_minus_1_527_at_d_pos_one_d_neg_zero() -> None:
    # Re-derive the minimum by brute force over the sigmoid outputs D ∈ [0, 1]².
    grid = np.linspace(0.0, 1.0, 1001)
    values = _literal_np(grid[:, None], grid[None, :])
    i, j = np.unravel_index(np.argmin(values), values.shape)
    assert (grid[i], grid[j]) == (1.0, 0.0)
    minimum = math.log(math.log1p(math.exp(-1))) + math.log(math.log(2))
    assert values[i, j] == pytest.approx(minimum)
    assert round(minimum, 3) == -1.527
    # The loss approaches it from above as T⁺ → +∞, T⁻ → −∞, and random logits stay above it.
    saturated = lsh_loss_literal(torch.full((3,), 40.0), torch.full((3,), -40.0)).item()
    assert saturated == pytest.approx(minimum, abs=1e-6)
    for seed in range(5):
        assert lsh_loss_literal(_logits((64,), seed), _logits((64,), seed + 10)).item() > minimum


def test_lsh_loss_literal_gradient_is_at_most_0_2_and_vanishes_at_six() -> None:
    t = torch.linspace(-12, 12, 2401, dtype=torch.float64)
    at_six = (t.abs() - 6).abs() < 1e-9
    assert int(at_six.sum()) == 2
    anchor = torch.zeros(1, dtype=torch.float64)
    for term in ("positive", "negative"):
        logits = t.clone().requires_grad_(True)
        pair = (logits, anchor) if term == "positive" else (anchor, logits)
        (grad,) = torch.autograd.grad(lsh_loss_literal(*pair), logits)
        # The mean divides each element's derivative by the element count; undo it.
        per_element = (grad * t.numel()).abs()
        assert per_element.max().item() <= 0.2
        assert per_element[at_six].max().item() < 0.003


@pytest.mark.parametrize("loss", [lsh_loss, lsh_loss_literal, jsd_mi_estimate])
def test_lsh_losses_reject_empty_or_integer_logits(loss) -> None:
    with pytest.raises(ValueError, match="pos_logits"):
        loss(torch.empty(0), torch.zeros(3))
    with pytest.raises(ValueError, match="neg_logits"):
        loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_roll_negatives_pairs_image_i_with_image_i_plus_one_never_itself(n: int) -> None:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 2, 3, 3)
    rolled = roll_negatives(x)
    partners = rolled[:, 0, 0, 0].long().tolist()
    assert partners == [(i + 1) % n for i in range(n)]
    assert all(partner != i for i, partner in enumerate(partners))


def test_roll_negatives_with_shift_and_gradient_flows_back() -> None:
    x = torch.arange(5, dtype=torch.float64).reshape(5, 1).requires_grad_(True)
    rolled = roll_negatives(x, shift=2)
    assert rolled[:, 0].tolist() == [2, 3, 4, 0, 1]
    (rolled[:, 0] * torch.arange(5)).sum().backward()
    assert x.grad[:, 0].tolist() == [3, 4, 0, 1, 2]


def test_roll_negatives_rejects_batches_below_two_and_self_pairing_shifts() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        roll_negatives(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="shift=4"):
        roll_negatives(torch.zeros(4, 3), shift=4)
    with pytest.raises(ValueError, match="shift=0"):
        roll_negatives(torch.zeros(4, 3), shift=0)
