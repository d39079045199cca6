"""Global context homogeneity (GCH) losses, hard and soft target (DRL, eqs. 7–10).

- Xu, Hou et al., "Data-Efficient Histopathology Image Analysis with Deformation Representation
  Learning", BIBM 2020.

Both losses compare L2-normalised global descriptors of the originals, g = F_G(x) (N, C), with those of
their elastically deformed copies, ĝ = F_G(x̂) (N, C), through the kernel of eq. 7,
K(x_i, x̂_j) = exp(g_i · ĝ_j / τ). The paper has τ = 1 and sums over i (eqs. 8 and 10); the
default here is the mean over i (design note E11), and ``reduction="sum"`` gives the paper's sum.

The descriptors must be able to point in any direction (METHOD.md (b), "Correction (measured)"):
pooled from a post-ReLU map they are non-negative, every cosine is ≥ 0, and at τ = 1 the hard loss
cannot go below log(1 + (N−1)/e) (1.27 for N = 8; chance is log N = 2.08). DRL pools them from the
FEM's pre-ReLU output (:mod:`histodrl.pretext.drl`).

Multi-GPU: with ``gather_distributed=True`` the negatives come from every process. Notation in the
comments: n = local batch size, m = n · world_size, c = descriptor size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from histodrl.losses.distributed import gather_distributed as _gather
from histodrl.losses.distributed import rank, world_size

_REDUCTIONS = ("mean", "sum")


def _check_arguments(
    g: torch.Tensor, g_hat: torch.Tensor, temperatures: dict[str, float], reduction: str
) -> None:
    """The one place where the GCH arguments are validated; raises ValueError naming the value."""
    if g.ndim != 2 or g_hat.ndim != 2 or g.shape != g_hat.shape:
        raise ValueError(
            f"g {tuple(g.shape)} and g_hat {tuple(g_hat.shape)}: expected two (N, C) tensors of one shape"
        )
    if g.shape[0] < 1 or g.shape[1] < 1:
        raise ValueError(f"g {tuple(g.shape)}: expected at least one row and one column")
    if not (g.is_floating_point() and g_hat.is_floating_point()):
        raise ValueError(f"g {g.dtype}, g_hat {g_hat.dtype}: expected floating-point tensors")
    for name, value in temperatures.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r}: expected a finite number > 0")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {_REDUCTIONS}")


def _gather_if(x: torch.Tensor, enabled: bool) -> tuple[torch.Tensor, int]:
    """(all processes' rows, offset of this process's rows) or (x, 0) when not gathering."""
    if not enabled or world_size() == 1:
        return x, 0
    return _gather(x), rank() * x.shape[0]


def _cross_entropy_on_diagonal(logits: torch.Tensor, offset: int, reduction: str) -> torch.Tensor:
    """CE of each row i of (n, m) ``logits`` against column offset + i."""
    target = torch.arange(logits.shape[0], device=logits.device) + offset
    return F.cross_entropy(logits, target, reduction=reduction)


def gch_hard_loss(
    g: torch.Tensor,
    g_hat: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Hard-target GCH loss (eq. 8): each original must pick out its own deformed copy.

    L = −(1/N) Σ_i log[ exp(g_i·ĝ_i/τ) / Σ_j exp(g_i·ĝ_j/τ) ], an InfoNCE over the deformed images,
    the positive included in the denominator (E13). Gradients flow into both ``g`` and ``g_hat``.

    Bound (τ = 1, unit vectors, N images in total): the logits lie in [−1, 1], so each term is at
    least log(1 + (N−1)e⁻²), reached jointly only for N = 2 (g_1 = ĝ_1 = −g_2 = −ĝ_2). The minimum
    of the mean over N ≥ 2 images is log(1 + (N−1)·e^(−N/(N−1))) (1.173 for N = 8, 0.666 per-term
    bound), reached by g = ĝ = a regular simplex (needs C ≥ N − 1). Chance level is log N.

    Args:
        g: L2-normalised global descriptors of the originals, F_G(x). Shape: (N, C).
        g_hat: L2-normalised global descriptors of the deformed copies, F_G(x̂); row i is the
            copy of original i. Shape: (N, C).
        temperature: τ > 0 dividing the logits; the paper's eq. 7 implies 1.
        reduction: "mean" over the originals (default, E11) or "sum" (the paper's Σ_i).
        gather_distributed: If True and torch.distributed is initialised with world size > 1,
            the deformed descriptors of every process are the candidates (with gradient), so each
            original has N·W − 1 negatives; the batch size must be equal on every process.

    Returns:
        The scalar loss. With N = 1 (and no other process) it is exactly 0.

    Raises:
        ValueError: If the shapes differ or are not (N, C), the temperature is not a finite
            positive number, or the reduction is unknown.
    """
    _check_arguments(g, g_hat, {"temperature": temperature}, reduction)
    g_hat_all, offset = _gather_if(g_hat, gather_distributed)
    # Local originals against every deformed copy: "nc,mc->nm".
    logits = torch.einsum("nc,mc->nm", g, g_hat_all) / temperature
    return _cross_entropy_on_diagonal(logits, offset, reduction)


def soft_targets(
    g: torch.Tensor, g_hat: torch.Tensor, weight_temperature: float = 1.0
) -> torch.Tensor:
    """Soft deformed targets of eq. 9, taken in descriptor space: t_i = L2norm(Σ_j W_ij ĝ_j).

    W = softmax_j(g_i·ĝ_j / τ_w) are eq. 9's weights K(x_i, x̂_j)/Z. Eq. 9 averages deformed
    instances; averaging their descriptors instead and re-normalising keeps t a valid F_G output
    (design note E14). Gradients flow through the weights and ``g_hat``.

    Args:
        g: L2-normalised descriptors of the originals (the queries). Shape: (N, C).
        g_hat: L2-normalised descriptors of the deformed images to average. Shape: (M, C); in the
            loss M = N, or N·W when gathered from W processes.
        weight_temperature: τ_w > 0; the paper's eq. 7 implies 1. As τ_w → 0 the weights become
            one-hot on each row's most similar deformed image.

    Returns:
        The soft targets, unit rows (a row that averages to the zero vector stays zero).
        Shape: (N, C).

    Raises:
        ValueError: If the tensors are not 2-D with the same number of columns, or τ_w is not a
            finite positive number.
    """
    if g.ndim != 2 or g_hat.ndim != 2 or g.shape[1] != g_hat.shape[1]:
        raise ValueError(
            f"g {tuple(g.shape)} and g_hat {tuple(g_hat.shape)}: expected (N, C) and (M, C)"
        )
    if not (math.isfinite(weight_temperature) and weight_temperature > 0):
        raise ValueError(f"weight_temperature={weight_temperature!r}: expected a finite number > 0")
    # Weights over the deformed images: "nc,mc->nm", softmax over m.
    weights = torch.softmax(torch.einsum("nc,mc->nm", g, g_hat) / weight_temperature, dim=1)
    # Weighted descriptor average: "nm,mc->nc".
    return F.normalize(torch.einsum("nm,mc->nc", weights, g_hat), dim=1, eps=1e-12)


def gch_soft_loss(
    g: torch.Tensor,
    g_hat: torch.Tensor,
    temperature: float = 1.0,
    weight_temperature: float = 1.0,
    detach_target: bool = False,
    reduction: str = "mean",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Soft-target GCH loss (eqs. 9–10): each soft target must pick out its own original.

    t = soft_targets(g, ĝ, τ_w) (eq. 9), then
    L = −(1/N) Σ_i log[ exp(t_i·g_i/τ) / Σ_j exp(t_i·g_j/τ) ], normalised over the originals j
    (eq. 10, the "inverse mapping" of the soft target back to x_i).

    With one-hot weights (t = ĝ) the logits are the transpose of the hard loss's, so the loss equals
    ``gch_hard_loss(g_hat, g)``: the hard loss with originals and deformed copies swapped.

    Args:
        g: L2-normalised global descriptors of the originals, F_G(x). Shape: (N, C).
        g_hat: L2-normalised global descriptors of the deformed copies, F_G(x̂); row i is the
            copy of original i. Shape: (N, C).
        temperature: τ > 0 dividing the logits of eq. 10; the paper implies 1.
        weight_temperature: τ_w > 0 of the weights of eq. 9; the paper implies 1.
        detach_target: If True, no gradient flows through the soft targets t (as the comparison
            features of Ye et al.'s BatchAverage are detached); ``g`` still gets the gradient of
            the logits' other side.
        reduction: "mean" over the originals (default, E11) or "sum" (the paper's Σ_i).
        gather_distributed: If True and torch.distributed is initialised with world size > 1,
            the weights of eq. 9 run over the deformed images of every process and eq. 10's
            softmax over the originals of every process (with gradient); the batch size must be
            equal on every process.

    Returns:
        The scalar loss. With N = 1 (and no other process) it is exactly 0.

    Raises:
        ValueError: If the shapes differ or are not (N, C), a temperature is not a finite positive
            number, or the reduction is unknown.
    """
    _check_arguments(
        g,
        g_hat,
        {"temperature": temperature, "weight_temperature": weight_temperature},
        reduction,
    )
    g_hat_all, offset = _gather_if(g_hat, gather_distributed)
    g_all, _ = _gather_if(g, gather_distributed)
    targets = soft_targets(g, g_hat_all, weight_temperature)  # (n, c)
    if detach_target:
        targets = targets.detach()
    # Local soft targets against every original: "nc,mc->nm".
    logits = torch.einsum("nc,mc->nm", targets, g_all) / temperature
    return _cross_entropy_on_diagonal(logits, offset, reduction)
