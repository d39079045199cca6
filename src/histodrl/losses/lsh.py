"""Local structure heterogeneity (LSH) loss: the JSD mutual-information objective (DRL eqs. 4 and 6).

- Xu, Hou et al., "Data-Efficient Histopathology Image Analysis with Deformation Representation
  Learning", BIBM 2020.
- Hjelm et al., "Learning deep representations by mutual information estimation and maximization"
  (DIM), ICLR 2019, https://arxiv.org/abs/1808.06670 (the JSD estimator, eq. 4 of DRL).

A local discriminator scores each location of the positive pair (X^Enc, F(X)) and of the negative
pair (X̂^Enc, F(X)) with a raw logit T. The encoder, the feature enhance module and the
discriminator all minimise the same loss (cooperative MI maximisation, design note E4). The
DIM baseline uses the same loss with negatives taken from other images (``roll_negatives``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2 = math.log(2.0)


def _check_logits(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> None:
    """The one place where the LSH arguments are validated; raises ValueError naming the value."""
    for name, logits in (("pos_logits", pos_logits), ("neg_logits", neg_logits)):
        if logits.numel() == 0 or not logits.is_floating_point():
            raise ValueError(
                f"{name} {tuple(logits.shape)} {logits.dtype}: expected a non-empty float tensor"
            )


def lsh_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """The LSH loss: the negated JSD MI estimate of DIM (eq. 4), without its constant 2·log 2.

    L = mean sp(−T⁺) + mean sp(T⁻), each mean over all of its elements (N·M·M locations, design
    note E3: per-location losses are averaged, not probabilities). This equals
    ``BCEWithLogits(T⁺, 1) + BCEWithLogits(T⁻, 0)``, i.e. −log σ(T⁺) − log(1 − σ(T⁻)), which is how
    the paper's "averaged after a sigmoid" and "log" of eq. 6 are read (design note E2). It is ≥ 0
    and goes to 0 as T⁺ → +∞ and T⁻ → −∞.

    Args:
        pos_logits: Raw discriminator logits T⁺ of the positive pairs (X^Enc, F(X)).
            Shape: (N, 1, M, M), or any non-empty shape.
        neg_logits: Raw logits T⁻ of the negative pairs (X̂^Enc, F(X)). Shape: any non-empty shape;
            usually that of ``pos_logits``.

    Returns:
        The scalar loss.

    Raises:
        ValueError: If either tensor is empty or not floating point.
    """
    _check_logits(pos_logits, neg_logits)
    return F.softplus(-pos_logits).mean() + F.softplus(neg_logits).mean()


def lsh_loss_literal(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 6 read literally, for the ablation only: D = σ(T), then log(sp(−D⁺)) + log(sp(D⁻)).

    L = mean log sp(−σ(T⁺)) + mean log sp(σ(T⁻)). It is minimised by D⁺ → 1 and D⁻ → 0, where it
    reaches log sp(−1) + log sp(0) = −1.527; it is not an MI estimator, and its gradient is small
    (|∂/∂T| ≤ 0.2 per element, about 0.002 at |T| = 6) because it saturates twice (design note E2).
    Use ``lsh_loss`` for training.

    Args:
        pos_logits: Raw discriminator logits T⁺ of the positive pairs. Shape: any non-empty shape.
        neg_logits: Raw logits T⁻ of the negative pairs. Shape: any non-empty shape.

    Returns:
        The scalar loss, in the open interval (log sp(−1) + log sp(0), log sp(0) + log sp(1)) =
        (−1.527, −0.094).

    Raises:
        ValueError: If either tensor is empty or not floating point.
    """
    _check_logits(pos_logits, neg_logits)
    # σ(T) ∈ (0, 1), so sp(·) ∈ (sp(−1), sp(1)) stays far from 0 and the log is safe.
    return (
        torch.log(F.softplus(-torch.sigmoid(pos_logits))).mean()
        + torch.log(F.softplus(torch.sigmoid(neg_logits))).mean()
    )


def jsd_mi_estimate(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """The JSD mutual-information estimate of DIM (eq. 4), for logging: 2·log 2 − ``lsh_loss``.

    It is ≤ 2·log 2 = 1.386 and 0 when the discriminator outputs T = 0 everywhere (chance).

    Args:
        pos_logits: Raw logits T⁺ of the positive pairs. Shape: any non-empty shape.
        neg_logits: Raw logits T⁻ of the negative pairs. Shape: any non-empty shape.

    Returns:
        The scalar estimate, in nats.

    Raises:
        ValueError: If either tensor is empty or not floating point.
    """
    return 2.0 * _LOG_2 - lsh_loss(pos_logits, neg_logits)


def roll_negatives(x: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Negatives for the DIM baseline (design note E5): the batch rolled along dim 0.

    Row i of the result is row (i + shift) mod N of ``x``, so pairing it with image i pairs every
    image with a different one; this is how DIM ports build their (x_j^Enc, F(x_i)), j ≠ i.

    Args:
        x: A batch, e.g. encoder maps X^Enc. Shape: (N, ...), N ≥ 2.
        shift: How far to roll; must not be a multiple of N (that would pair i with itself).

    Returns:
        The rolled batch, a new tensor (the gradient flows back to ``x``). Shape: (N, ...).

    Raises:
        ValueError: If N < 2 or ``shift`` is a multiple of N.
    """
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"x {tuple(x.shape)}: expected a batch of at least 2 along dim 0")
    if shift % x.shape[0] == 0:
        raise ValueError(
            f"shift={shift!r}: must not be a multiple of the batch size {x.shape[0]} "
            "(each image would be its own negative)"
        )
    return torch.roll(x, shifts=-shift, dims=0)
