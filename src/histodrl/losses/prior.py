"""Prior matching: an adversarial term pushing σ(h) towards a uniform prior (DIM, design E15).

- Hjelm et al., "Learning deep representations by mutual information estimation and maximization"
  (DIM), ICLR 2019, https://arxiv.org/abs/1808.06670, section 3.3 and the official code
  (``cortex_DIM/models/prior_matching.py``, ``functions/gan_losses.py``,
  ``functions/gradient_penalty.py``). DRL adds this term "as in [14]" and gives no details.

``h`` is the global vector of the original images, pooled from an output that can be negative (the
FEM's pre-ReLU output, or a linear projection; METHOD.md (b), "Correction (measured)"). Pooled from a
post-ReLU map, every coordinate of σ(h) would be ≥ 0.5 and the discriminator would win by that rule.

Unlike the LSH loss this one is a real two-player game: the prior discriminator Dp minimises
``prior_discriminator_loss`` (fake = encoder output, detached) in its own optimizer step, and the
encoder minimises γ·``prior_generator_loss`` (the non-saturating GAN loss). Minimising the
discriminator's own loss with the encoder, as some DIM ports do, is a known bug.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def _check_logits(**logits: torch.Tensor) -> None:
    """The one place where the logits are validated; raises ValueError naming the value."""
    for name, value in logits.items():
        if value.numel() == 0 or not value.is_floating_point():
            raise ValueError(
                f"{name} {tuple(value.shape)} {value.dtype}: expected a non-empty float tensor"
            )


def prior_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The prior discriminator's loss (GAN/JSD measure): mean sp(−Dp(u)) + mean sp(Dp(z)).

    Equal to ``BCEWithLogits(Dp(u), 1) + BCEWithLogits(Dp(z), 0)``: real prior samples u are
    labelled 1, encoder outputs z are labelled 0. Pass logits of ``z.detach()`` so that this step
    trains only the discriminator.

    Args:
        real_logits: Raw logits Dp(u) on prior samples. Shape: (N, 1) or any non-empty shape.
        fake_logits: Raw logits Dp(z) on encoder outputs. Shape: (N, 1) or any non-empty shape.

    Returns:
        The scalar loss (≥ 0; 2·log 2 when Dp outputs 0 everywhere).

    Raises:
        ValueError: If either tensor is empty or not floating point.
    """
    _check_logits(real_logits=real_logits, fake_logits=fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def prior_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The encoder's prior-matching loss, non-saturating: mean sp(−Dp(z)) = BCEWithLogits(Dp(z), 1).

    The encoder is rewarded for making Dp call its outputs real; weight it by γ (0.1 by default).
    Gradients reach the encoder through ``fake_logits`` (and Dp's parameters, whose gradients the
    main step must zero or exclude).

    Args:
        fake_logits: Raw logits Dp(z) on encoder outputs, not detached. Shape: any non-empty shape.

    Returns:
        The scalar loss (≥ 0).

    Raises:
        ValueError: If the tensor is empty or not floating point.
    """
    _check_logits(fake_logits=fake_logits)
    return F.softplus(-fake_logits).mean()


def gradient_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
) -> torch.Tensor:
    """DIM's contrastive gradient penalty: mean over samples of ‖∇_x Dp(x)‖², at ``inputs``.

    The gradient is taken of Σ_n Dp(x)_n, which is each sample's own input gradient when Dp treats
    samples independently (an MLP, no batch norm). It is built with ``create_graph=True`` so the
    penalty can be back-propagated into the discriminator's parameters. ``inputs`` are detached
    first: the penalty trains the discriminator only. Call it on the real and the fake batch
    concatenated (or on each) and add weight · penalty to ``prior_discriminator_loss``.

    Args:
        discriminator: Maps (N, ...) inputs to (N,) or (N, 1) logits.
        inputs: The points where the gradient is taken. Shape: (N, ...), N ≥ 1.

    Returns:
        The scalar penalty (1/N) Σ_n ‖∂Dp(x)_n/∂x_n‖².

    Raises:
        ValueError: If ``inputs`` is empty or not floating point.
    """
    _check_logits(inputs=inputs)
    points = inputs.detach().requires_grad_(True)
    outputs = discriminator(points)
    (grad,) = torch.autograd.grad(outputs.sum(), points, create_graph=True)
    return grad.reshape(grad.shape[0], -1).pow(2).sum(dim=1).mean()


def sample_uniform_prior(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Samples u ~ U[0, 1) of the given shape, the prior that σ(h) is matched to.

    Args:
        shape: The output shape, usually (N, C2).
        generator: The source of randomness; the same seeded generator gives the same samples. It
            must live on ``device``.
        device: Where to create the samples (default: the current default device).
        dtype: Floating-point type (default: the current default dtype).

    Returns:
        The samples. Shape: ``shape``.

    Raises:
        ValueError: If a dimension is negative.
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape={shape!r}: expected non-negative dimensions")
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)
