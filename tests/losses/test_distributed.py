"""Gathered GCH losses on two gloo processes equal the single-process losses on the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from histodrl.losses.distributed import gather_distributed, rank, world_size
from histodrl.losses.gch import gch_hard_loss, gch_soft_loss

WORLD = 2
LOCAL_BATCH = 3
CHANNELS = 5

# name -> (loss on unit descriptors, reduction); the temperatures are not 1 so that they matter.
CASES = {
    "hard_mean": (lambda g, h, **kw: gch_hard_loss(g, h, temperature=0.5, **kw), "mean"),
    "hard_sum": (
        lambda g, h, **kw: gch_hard_loss(g, h, temperature=0.5, reduction="sum", **kw),
        "sum",
    ),
    "soft_mean": (
        lambda g, h, **kw: gch_soft_loss(g, h, temperature=0.5, weight_temperature=0.7, **kw),
        "mean",
    ),
    "soft_sum": (
        lambda g, h, **kw: gch_soft_loss(g, h, 0.5, 0.7, reduction="sum", **kw),
        "sum",
    ),
    "soft_detached_mean": (
        lambda g, h, **kw: gch_soft_loss(g, h, 0.5, 0.7, detach_target=True, **kw),
        "mean",
    ),
}


def _full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The concatenated batch of every process, unnormalised, identical on every process."""
    generator = torch.Generator().manual_seed(1234)
    shape = (WORLD * LOCAL_BATCH, CHANNELS)
    raw = torch.randn(shape, generator=generator, dtype=torch.float64)
    return raw, torch.randn(shape, generator=generator, dtype=torch.float64)


def _loss_and_grads(name: str, gather: bool, rows: slice) -> torch.Tensor:
    """(loss, d loss/d raw, d loss/d raw_hat) flattened; only ``rows`` of the batch are used.

    The full batch is a leaf on every process, like a replicated parameter, so that DDP's
    all_reduce over processes can be imitated on its gradient.
    """
    raw, raw_hat = (x.requires_grad_(True) for x in _full_batch())
    loss_fn, _ = CASES[name]
    g, g_hat = F.normalize(raw[rows], dim=1), F.normalize(raw_hat[rows], dim=1)
    loss = loss_fn(g, g_hat, gather_distributed=gather)
    grads = torch.autograd.grad(loss, (raw, raw_hat), allow_unused=True)
    grads = [torch.zeros_like(raw) if grad is None else grad for grad in grads]
    return torch.cat([loss.detach().reshape(1), grads[0].reshape(-1), grads[1].reshape(-1)])


def _worker(process: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=process, world_size=WORLD
    )
    try:
        results = {"rank": torch.tensor([rank()]), "world_size": torch.tensor([world_size()])}
        marker = torch.full((2, 1), float(process), requires_grad=True)
        results["gathered"] = gather_distributed(marker).detach()
        rows = slice(process * LOCAL_BATCH, (process + 1) * LOCAL_BATCH)
        for name in CASES:
            summed = _loss_and_grads(name, gather=True, rows=rows)
            # DDP's step: sum over processes (the division by the world size is done by the test).
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            results[name] = summed
        gathered_ranks = [torch.zeros(1, dtype=torch.long) for _ in range(WORLD)]
        dist.all_gather(gathered_ranks, results["rank"])
        results["ranks"] = torch.cat(gathered_ranks)
        torch.save(results, Path(out_dir) / f"rank{process}.pt")
    finally:
        dist.destroy_process_group()


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """Runs the two processes once for every test of this module."""
    out_dir = tmp_path_factory.mktemp("gloo")
    previous = os.environ.get("GLOO_SOCKET_IFNAME")
    # Keep gloo's own connections on the loopback interface as well.
    if any(name == "lo" for _, name in socket.if_nameindex()):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        mp.spawn(_worker, args=(_free_local_port(), str(out_dir)), nprocs=WORLD, join=True)
    finally:
        if previous is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = previous
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gather_distributed_concatenates_every_process_in_rank_order(two_process_results) -> None:
    expected = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    for process, results in enumerate(two_process_results):
        assert results["rank"].item() == process and results["world_size"].item() == WORLD
        torch.testing.assert_close(results["gathered"], expected)


@pytest.mark.parametrize("name", list(CASES))
def test_gathered_losses_and_ddp_averaged_gradients_equal_single_process(
    two_process_results, name
) -> None:
    _, reduction = CASES[name]
    whole = _loss_and_grads(name, gather=False, rows=slice(None))
    summed = two_process_results[0][name]
    torch.testing.assert_close(two_process_results[1][name], summed)
    # Mean: the mean over processes of the per-process means is the global mean, and DDP's
    # averaged gradients are the global gradients. Sum: the plain sums over processes are.
    combined = summed / WORLD if reduction == "mean" else summed
    torch.testing.assert_close(combined, whole)
    # The gathering matters: without it, each process's loss would only see its own batch.
    local = sum(
        _loss_and_grads(name, gather=False, rows=slice(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH))
        for r in range(WORLD)
    )
    local = local / WORLD if reduction == "mean" else local
    assert not torch.allclose(local[:1], whole[:1])


def test_rank_and_world_size_without_process_group() -> None:
    assert (rank(), world_size()) == (0, 1)
    x = torch.ones(2, 3)
    assert gather_distributed(x) is x
