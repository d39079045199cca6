"""Cost of one DRL training step against the bare trunk it trains, measured in the same run.

DRL trains the encoder up to the tap (conv4_4 by default). Everything else in a step — deformation,
FEM, the local discriminator on 2·N·M² locations, the GCH and prior losses, the prior discriminator —
is overhead on top of the trunk's forward+backward over the same 2N images. This prints both times
and their ratio (by FLOP count about 1.2; the target is at most 1.25).

    python benchmarks/pretrain_step.py                       # CPU: width 1/4, 128² crops, batch 8
    python benchmarks/pretrain_step.py --width 1 --crop 256 --batch 64 --bf16 [--compile]   # GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from histodrl.pretext.drl import DRL
from histodrl.runs.sampling import step_generator


def _config(width: float, crop: int, batch: int, compile_: bool) -> dict:
    return {
        "method": "drl",
        "data": "benchmark",
        "crop": crop,
        "width": width,
        "arch": "vgg19_bn",
        "seed": 0,
        "batch_size": batch,
        "lr": 1e-4,
        "tap": "conv4_4",
        "no_fem": False,
        "fem_branch_channels": 128,
        "gch": "hard",
        "lsh": "jsd",
        "lambda_": 0.01,
        "gamma": 0.1,
        "temperature": 1.0,
        "weight_temperature": 1.0,
        "gch_reduction": "mean",
        "detach_soft_target": False,
        "prior_penalty": 0.0,
        "sigma_range": [0.03, 0.05],
        "alpha_factor": 2.0,
        "deform_size": None,
        "log_every": 10**9,
        "compile": compile_,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    module = DRL(_config(args.width, args.crop, args.batch, args.compile)).to(device)
    module = module.to(memory_format=torch.channels_last)
    module.configure_model()
    optimizer = module.configure_optimizers()
    images = torch.randint(0, 256, (args.batch, 3, args.crop, args.crop), dtype=torch.uint8)
    images = images.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    step = 0

    def drl_step() -> None:
        nonlocal step
        module._step_gen = step_generator(0, step, 0, device)
        x = module.on_after_batch_transfer(images, 0)
        with autocast:
            loss, _ = module.pretext_step(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1

    trunk = module.encoder
    both = torch.randn(2 * args.batch, 3, args.crop, args.crop, device=device)
    both = both.contiguous(memory_format=torch.channels_last)

    def trunk_step() -> None:
        with autocast:
            out = trunk.forward_taps(both, ["conv4_4"])["conv4_4"]
        optimizer.zero_grad(set_to_none=True)
        out.float().square().mean().backward()
        optimizer.step()

    # Alternate the two so that a change in machine load hits both alike; best of each.
    t_trunk = t_drl = float("inf")
    for _ in range(args.repeats):
        t_trunk = min(t_trunk, _time(trunk_step, device, 1, args.warmup))
        t_drl = min(t_drl, _time(drl_step, device, 1, args.warmup))
        args.warmup = 0
    pairs = args.batch / t_drl
    print(
        f"device={device.type} width={args.width} crop={args.crop} batch={args.batch} "
        f"bf16={args.bf16} compile={args.compile} threads={torch.get_num_threads()}"
    )
    print(f"bare trunk to conv4_4, fwd+bwd on 2B images: {t_trunk * 1e3:8.1f} ms")
    print(
        f"full DRL step:                               {t_drl * 1e3:8.1f} ms  ({pairs:.1f} pairs/s)"
    )
    print(f"ratio DRL / trunk: {t_drl / t_trunk:.2f}")


if __name__ == "__main__":
    main()
