"""Gathering descriptors from every process, with gradient, for the contrastive GCH losses.

With data-parallel training on W processes, each process sees only its own N images. A contrastive
loss that draws its negatives from the local batch alone sees N − 1 negatives instead of N·W − 1.
``gather_distributed`` concatenates every process's rows in rank order and, unlike a plain
``all_gather``, lets the gradient flow back to the rows that this process contributed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group; 0 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class GatherLayer(torch.autograd.Function):
    """``all_gather`` that keeps the autograd graph: forward concatenates, backward routes gradients.

    Forward: every process contributes x (N, C); every process gets cat(x_0, …, x_{W−1}) (N·W, C).

    Backward: process r's loss L_r depends on every process's rows through the gathered tensor, so
    the gradient of the total Σ_r L_r with respect to x_r is Σ_{r'} ∂L_{r'}/∂(gathered)[slice r].
    The incoming gradients are therefore summed over processes (``all_reduce(SUM)``) and this
    process's slice is returned. With a mean-reduced loss per process and DDP's averaging of
    parameter gradients (a further division by W), the parameter update equals the single-process
    gradient of the mean loss over the concatenated batch of N·W images.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.batch_size = x.shape[0]
        ctx.rank = dist.get_rank()
        x = x.contiguous()
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x)
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        # clone: all_reduce works in place and autograd may hand the same buffer to other nodes.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch_size
        return grad[start : start + ctx.batch_size]


def gather_distributed(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, in rank order, keeping gradients.

    Every process must call this (it is a collective) with the same shape; the batch size must be
    equal across processes (``all_gather`` needs equal shapes; drop the last incomplete batch).

    Args:
        x: This process's rows. Shape: (N, ...).

    Returns:
        The rows of all W processes, process r's rows at [r·N, (r+1)·N). Shape: (N·W, ...).
        When ``torch.distributed`` is not initialised, or W = 1, ``x`` itself is returned.
    """
    if world_size() == 1:
        return x
    return GatherLayer.apply(x)
