"""Prior-matching losses, the gradient penalty and the uniform prior, recomputed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histodrl.losses.prior import (
    gradient_penalty,
    prior_discriminator_loss,
    prior_generator_loss,
    sample_uniform_prior,
)


def _logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 4 * torch.randn(shape, generator=generator, dtype=torch.float64)


def test_discriminator_loss_matches_numpy_and_binary_cross_entropy() -> None:
    real, fake = _logits((8, 1), 0), _logits((6, 1), 1)
    expected = np.logaddexp(0, -real.numpy()).mean() + np.logaddexp(0, fake.numpy()).mean()
    got = prior_discriminator_loss(real, fake)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    bce = F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    torch.testing.assert_close(got, bce)


def test_generator_loss_is_non_saturating() -> None:
    fake = _logits((8, 1), 2).requires_grad_(True)
    loss = prior_generator_loss(fake)
    assert loss.item() == pytest.approx(np.logaddexp(0, -fake.detach().numpy()).mean(), rel=1e-12)
    loss.backward()
    torch.testing.assert_close(fake.grad, -torch.sigmoid(-fake.detach()) / 8)
    # Where Dp confidently rejects z (logit -20) the gradient stays about -1/N, unlike the
    # minimax form -sp(Dp(z)) whose gradient σ(-20) has vanished.
    rejected = torch.full((4, 1), -20.0, dtype=torch.float64, requires_grad=True)
    prior_generator_loss(rejected).backward()
    torch.testing.assert_close(rejected.grad, torch.full_like(rejected, -0.25), atol=1e-8, rtol=0)


def test_gradient_penalty_of_a_linear_discriminator_is_squared_weight_norm() -> None:
    linear = torch.nn.Linear(5, 1).double()
    inputs = _logits((7, 5), 3)
    penalty = gradient_penalty(linear, inputs)
    weight = linear.weight.detach()
    assert penalty.item() == pytest.approx(weight.pow(2).sum().item(), rel=1e-12)
    # create_graph=True: the penalty trains the weights, d‖w‖²/dw = 2w, and not the bias.
    penalty.backward()
    torch.testing.assert_close(linear.weight.grad, 2 * weight)
    assert linear.bias.grad is None or torch.count_nonzero(linear.bias.grad) == 0


def test_gradient_penalty_of_a_quadratic_is_mean_squared_norm_of_two_x() -> None:
    inputs = _logits((6, 3), 4)
    penalty = gradient_penalty(lambda x: x.pow(2).sum(dim=1), inputs)
    assert penalty.item() == pytest.approx((2 * inputs).pow(2).sum(dim=1).mean().item())


def test_gradient_penalty_of_an_mlp_matches_central_finite_differences() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    ).double()
    inputs = _logits((5, 2, 2), 5) / 4  # (N, ...) inputs are flattened per sample
    discriminator = lambda x: mlp(x.reshape(x.shape[0], -1))  # noqa: E731
    step, squared_norms = 1e-6, []
    with torch.no_grad():
        for n in range(inputs.shape[0]):
            x = inputs[n : n + 1].reshape(-1)
            grad = []
            for k in range(x.numel()):
                e = torch.zeros_like(x)
                e[k] = step
                up = discriminator((x + e).reshape(1, 2, 2)).item()
                down = discriminator((x - e).reshape(1, 2, 2)).item()
                grad.append((up - down) / (2 * step))
            squared_norms.append(sum(v * v for v in grad))
    penalty = gradient_penalty(discriminator, inputs)
    assert penalty.item() == pytest.approx(float(np.mean(squared_norms)), rel=1e-6)


def test_gradient_penalty_sends_no_gradient_to_its_inputs() -> None:
    source = _logits((4, 3), 6).requires_grad_(True)
    linear = torch.nn.Linear(3, 1).double()
    gradient_penalty(lambda x: linear(x) ** 2, source * 2).backward()
    assert source.grad is None


def test_sample_uniform_prior_is_reproducible_in_unit_interval() -> None:
    first = sample_uniform_prior((64, 10), generator=torch.Generator().manual_seed(7))
    again = sample_uniform_prior([64, 10], generator=torch.Generator().manual_seed(7))
    other = sample_uniform_prior((64, 10), generator=torch.Generator().manual_seed(8))
    assert first.shape == (64, 10) and first.dtype == torch.get_default_dtype()
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= 0 and first.max() < 1
    # 640 uniform samples: mean 0.5, std 1/sqrt(12); both well within 5 standard errors.
    assert abs(first.mean().item() - 0.5) < 5 * (1 / np.sqrt(12)) / np.sqrt(640)
    wide = sample_uniform_prior((2, 3), dtype=torch.float64, device="cpu")
    assert wide.dtype == torch.float64 and wide.device.type == "cpu"


def test_prior_functions_reject_bad_arguments_naming_the_value() -> None:
    with pytest.raises(ValueError, match="real_logits"):
        prior_discriminator_loss(torch.empty(0), torch.zeros(2))
    with pytest.raises(ValueError, match="fake_logits"):
        prior_generator_loss(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="inputs"):
        gradient_penalty(torch.nn.Identity(), torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"shape=\(2, -1\)"):
        sample_uniform_prior((2, -1))
