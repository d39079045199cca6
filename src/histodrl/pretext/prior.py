"""Adversarial terms trained with the one optimizer of the base: DIM's prior matching and friends.

The base steps every parameter with one Adam. A two-player term fits in that single step because Adam
is per-parameter and each loss reaches only its own player: the generator's loss goes through a copy
of the discriminator whose weights are detached (``torch.func.functional_call``), and the
discriminator's loss sees the generated input detached. Adding both losses to the objective is then
the same update as stepping two optimizers on the same batch.

- Prior matching (DIM, Hjelm et al. 2019, https://arxiv.org/abs/1808.06670, section 3.3; METHOD.md
  (b) "Prior matching term", its correction, and E15): ``σ(h)`` against U[0, 1]^C, with ``h`` a
  global vector that can be negative (``GLOBAL_HEADS``), used by DRL and DIM.
- The same game on images is the Context Encoder's optional adversarial term (inpainting).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from histodrl.losses import (
    gradient_penalty,
    prior_discriminator_loss,
    prior_generator_loss,
    sample_uniform_prior,
)

#: Where DRL's and DIM's global vector h comes from (F_G = L2norm(h), prior input z = σ(h)), the
#: ``global_head`` option: "preact" (default) = an output that can be negative, the FEM's
#: concatenated branch outputs before their final ReLU, or without a FEM the Linear -> BatchNorm1d
#: projection of the pooled tap (:class:`histodrl.nn.fem.GlobalProjection`); "relu" = GAP of the
#: post-ReLU map, the earlier reading whose failure METHOD.md (b) measured (comparison only).


def adversarial_losses(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, penalty: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(generator loss, discriminator loss) of a GAN term, both to be minimised in one step.

    The generator loss is the non-saturating ``mean sp(−D(fake))`` through D with detached
    weights, so it moves only what produced ``fake``; the discriminator loss is
    ``mean sp(−D(real)) + mean sp(D(fake.detach()))`` (+ ``penalty`` times DIM's gradient penalty
    on real and fake), so it moves only D. D must not hold BatchNorm: the detached-weight call would
    update its running statistics a second time.

    Args:
        discriminator: maps (N, ...) inputs to (N,) or (N, 1) logits.
        real: samples D should call real (the prior, real image regions). Shape: (N, ...).
        fake: the generated samples, not detached. Shape: (N, ...).
        penalty: weight of the gradient penalty (0 turns it off); must be ≥ 0.

    Returns:
        The two scalar losses.

    Raises:
        ValueError: if ``penalty`` is negative.
    """
    if penalty < 0:
        raise ValueError(f"penalty={penalty!r}: expected a number >= 0")
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    gen_loss = prior_generator_loss(functional_call(discriminator, frozen, (fake,)))
    fake = fake.detach()
    d_loss = prior_discriminator_loss(discriminator(real), discriminator(fake))
    if penalty > 0:
        d_loss = d_loss + penalty * gradient_penalty(discriminator, torch.cat([real, fake]))
    return gen_loss, d_loss


def prior_losses(
    prior_d: nn.Module,
    pooled: torch.Tensor,
    generator: torch.Generator | None,
    penalty: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder's prior loss, prior discriminator's loss) for global vectors (METHOD.md (b)).

    ``z = σ(pooled)`` is matched to ``u ~ U[0, 1)`` of the same shape drawn from ``generator``.
    ``pooled`` must be able to take both signs (the FEM's pre-ReLU output pooled, or a linear
    projection, see ``GLOBAL_HEADS``): pooled from a post-ReLU map, every coordinate of ``z`` is
    ≥ 0.5, and the discriminator wins by that rule alone (METHOD.md (b), "Correction (measured)").

    Args:
        prior_d: the prior discriminator (:class:`histodrl.nn.PriorDiscriminator`).
        pooled: the global vector h, before any normalisation or sigmoid. Shape: (N, C).
        generator: source of the prior samples, on ``pooled``'s device.
        penalty: weight of the prior discriminator's gradient penalty (≥ 0).

    Returns:
        The two scalar losses; weight the first by γ.
    """
    z = torch.sigmoid(pooled)
    u = sample_uniform_prior(z.shape, generator=generator, device=z.device)
    return adversarial_losses(prior_d, u, z, penalty)
