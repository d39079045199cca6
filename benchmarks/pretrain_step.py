"""Cost of one DRL training step against the bare trunk it trains, measured in the same run.

DRL trains the encoder up to the tap (conv4_4 by default). Everything else in a step (the
deformation, the FEM, the local discriminator on 2·N·M² locations, the GCH loss, the prior term and
its discriminator) is overhead on top of the trunk's forward+backward over the same 2N images
(by FLOP count about 1.2; the target on a GPU is at most 1.25, the deformation at most 3 %).

One run prints:

- the bare trunk (to the tap, fwd+bwd on the 2N prepared images, Adam step) and the whole DRL step
  (uint8 batch -> flip/rot90 -> deformation -> prepared batch -> loss -> backward -> Adam step, as
  ``training_step`` runs it), and their ratio;
- the share of the step of the deformation and of each head. Each part is timed **alone**, with
  the others removed, on the inputs the step gives it (captured from one step, detached, with
  ``requires_grad`` where the step back-propagates through them): the deformation forward (it has
  no backward), the FEM fwd+bwd, the local discriminator fwd+bwd, the GCH loss fwd+bwd, the prior
  term fwd+bwd (both players). "rest" is the step minus the trunk and these parts (batch
  preparation, logs, the Adam update of the heads, and what running the parts together costs);
  with ``--compile`` the step and the trunk are compiled, the parts alone run eagerly;
- the peak memory of the trunk and of the step: on CUDA ``torch.cuda.max_memory_allocated`` above
  what was allocated before; on a CPU the growth of the process's peak resident set size
  (``resource.getrusage(...).ru_maxrss``, a high-water mark: the trunk is measured first, then
  the step; an approximation that includes the allocator's caching).

Every timed function runs once per round; rounds interleave them (so that a change in machine load
hits all alike) and the table shows medians over rounds; the ratio is the median of the per-round
ratios. On a shared CPU, ``--threads 1 --clock cpu`` times CPU time instead of wall time.

    python benchmarks/pretrain_step.py                       # CPU: width 1/4, 128² crops, batch 8
    python benchmarks/pretrain_step.py --device cuda --width 1 --crop 256 --batch 64 --bf16 [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from histodrl.commands.pretrain import PretrainOptions
from histodrl.pretext.drl import DRL
from histodrl.runs.sampling import step_generator


def _options(args: argparse.Namespace) -> PretrainOptions:
    return PretrainOptions(
        data="folder:benchmark",
        out="benchmark-run",
        crop=args.crop,
        width=args.width,
        batch_size=args.batch,
        lambda_=0.01,
        gamma=0.1,
        log_every=10**9,
        compile=args.compile,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mib() -> float:
    """The process's peak resident set size so far, MiB (ru_maxrss is KiB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _peak_memory(first: Callable[[], None], then: Callable[[], None], device: torch.device):
    """Peak memory (MiB) of ``first`` and of ``then`` (see the module docstring)."""
    if device.type == "cuda":
        peaks = []
        for fn in (first, then):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks.append((torch.cuda.max_memory_allocated() - before) / 2**20)
        return tuple(peaks)
    # A high-water mark: measured from before the first call, so the second peak counts only
    # where it exceeds the first.
    before = _rss_mib()
    first()
    after_first = _rss_mib()
    then()
    return after_first - before, _rss_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--compile", action="store_true", help="as --compile trains")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (medians over them)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (CPU device only; steadier than wall time on a shared "
        "machine, best with --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu: only with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = DRL(_options(args)).to(device)
    module.configure_model()  # as Lightning calls it (--compile)
    optimizer = module.configure_optimizers()
    n, tap = args.batch, module.tap
    images = torch.randint(0, 256, (n, 3, args.crop, args.crop), dtype=torch.uint8).to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    state = {"step": 0}

    def drl_step() -> None:
        module._step_gen = step_generator(0, state["step"], 0, device)
        x = module.on_after_batch_transfer(images, 0)
        with autocast:
            loss, _ = module.pretext_step(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        module._step_gen = None
        state["step"] += 1

    # The step's intermediate values, for the parts timed alone.
    module._step_gen = step_generator(0, 0, 0, device)
    x = module.on_after_batch_transfer(images, 0)
    with torch.no_grad(), autocast:
        x_hat = module.deform(x)
        u = module.prior_sample(n, device)
        batch = module.prepare(torch.cat([x, x_hat]))
        both = module.encoder.forward_taps(batch, [tap])[tap]
        context, h = module.context_and_global(both)
    module._step_gen = None

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone(memory_format=torch.preserve_format).requires_grad_()

    both_in, context_in, h_in = leaf(both), leaf(context), leaf(h)

    def backward(*outputs: torch.Tensor) -> None:
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])

    def trunk_step() -> None:
        with autocast:
            out = module.encode(batch, [tap])[tap]
        optimizer.zero_grad(set_to_none=True)
        out.float().square().mean().backward()
        optimizer.step()

    def deform_part() -> None:
        module._step_gen = step_generator(0, 0, 0, device)
        with torch.no_grad():
            module.deform(x)
        module._step_gen = None

    def fem_part() -> None:  # the FEM with the ReLU and the pooling the step applies to it
        with autocast:
            context_out, h_out = module.context_and_global(both_in)
        backward(context_out, h_out)

    def local_part() -> None:
        with autocast:
            logits = module.local_d.forward_shared(both_in, context_in)
        backward(logits)

    def gch_part() -> None:
        with autocast:
            loss = module._gch(F.normalize(h_in[:n], dim=1), F.normalize(h_in[n:], dim=1))
        backward(loss)

    def prior_part() -> None:
        with autocast:
            prior, prior_d = module._prior(h_in[:n], u)
        backward(prior, prior_d)

    parts: dict[str, Callable[[], None]] = {"deformation": deform_part}
    if module.fem is not None:
        parts["FEM"] = fem_part
    parts["local discriminator"] = local_part
    if module.options.gch != "none":
        parts["GCH"] = gch_part
    if module.prior_d is not None:
        parts["prior"] = prior_part

    timed: dict[str, Callable[[], None]] = {"trunk": trunk_step, "step": drl_step, **parts}
    # Memory first (the CPU measure is a high-water mark): trunk, then the whole step.
    peak_trunk, peak_step = _peak_memory(trunk_step, drl_step, device)
    times: dict[str, list[float]] = {name: [] for name in timed}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in timed.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            if round_ >= args.warmup:
                times[name].append(clock() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    ratios = [s / t for s, t in zip(times["step"], times["trunk"])]
    t_step = med["step"]
    rest = t_step - med["trunk"] - sum(med[p] for p in parts)

    print(
        f"device={device.type} width={args.width} crop={args.crop} batch={n} tap={tap} "
        f"M={module.M} bf16={args.bf16} compile={args.compile} "
        f"threads={torch.get_num_threads()} clock={args.clock} rounds={args.repeats} (medians)"
    )
    print(f"{'':44s}{'ms':>9s}{'% of step':>11s}")
    print(f"{'bare trunk to ' + tap + ', fwd+bwd on 2N images':44s}{med['trunk'] * 1e3:9.1f}")
    per = "pairs/s" if args.clock == "wall" else "pairs/CPU-s"
    print(f"{'DRL step (' + f'{n / t_step:.1f} {per})':44s}{t_step * 1e3:9.1f}{100.0:10.1f}")
    label = {"deformation": "  deformation (fwd, alone)"}
    for name in parts:
        text = label.get(name, f"  {name} (fwd+bwd, alone)")
        print(f"{text:44s}{med[name] * 1e3:9.1f}{100 * med[name] / t_step:10.1f}")
    print(f"{'  rest (step - trunk - parts)':44s}{rest * 1e3:9.1f}{100 * rest / t_step:10.1f}")
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"ratio DRL step / bare trunk: {statistics.median(ratios):.2f} (rounds: {spread})")
    how = "max_memory_allocated" if device.type == "cuda" else "peak RSS growth, trunk first"
    print(f"peak memory ({how}): trunk {peak_trunk:.0f} MiB, DRL step {peak_step:.0f} MiB")


if __name__ == "__main__":
    main()
