"""Callbacks every training run gets: divergence stops the run, SIGTERM / SIGINT stop it cleanly.

**Non-finite loss or weights** (:class:`FiniteWatch`). After every step the loss (and, when the
step returns them, its named terms: ``{"loss": ..., "terms": {...}}``) is checked *on the device*
for NaN, inf or a magnitude above :data:`LOSS_LIMIT`:
a flag tensor and the first bad step accumulate there, with no host synchronisation. The flag is
read on the host every :data:`READ_EVERY` steps on a GPU (every step on a CPU, where reading is
free), before every checkpoint, and after the last step; the weights are checked for NaN/inf at
the same points. A bad value stops the run with one line naming the step and the term
(``step 12: loss term 'gch' is nan: training diverged ...``), exit status 2; because the check runs
before Lightning's checkpoint callback, the last good ``last.ckpt`` stays, and no encoder,
metrics or report is written from the bad state. Cost on a GPU: one ``isfinite`` and a few
element-wise ops per step (microseconds), one host read per 50 steps.

**Signals** (:class:`StopOnSignal`). SIGTERM (a cluster's pre-emption) and SIGINT (Ctrl-C) set a
flag; at the end of the current step the trainer stops, the run saves ``last.ckpt`` and raises
:class:`RunInterrupted`, which the command line prints as one line and exits with 143 / 130.
``--resume`` then continues exactly: batches and random draws are functions of the step.
"""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
import torch

from histodrl.errors import UserInputError

READ_EVERY = 50
LOSS_LIMIT = 1e6
"""A loss term larger than this in magnitude has diverged: every loss here (cross-entropy, BCE,
JSD, InfoNCE, MSE on normalised images) is of order 1-10 while training works."""


class RunInterrupted(Exception):
    """A run stopped by a signal after saving its checkpoint."""

    def __init__(self, signum: int, step: int, saved: bool) -> None:
        self.signum = signum
        self.step = step
        self.saved = saved
        name = signal.Signals(signum).name
        what = "checkpoint saved; continue with --resume" if saved else "no checkpoint saved"
        super().__init__(f"stopped by {name} at step {step} ({what})")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def diverged(step: int, term: str, value: str) -> UserInputError:
    return UserInputError(
        f"step {step}: {term} is {value}: training diverged (lower the learning rate, check the "
        "input data, or use --precision 32-true)"
    )


class FiniteWatch(L.Callback):
    """Stop a run at the first non-finite loss term or weight (see the module docstring)."""

    def __init__(self, checkpoint_every: int, read_every: int = READ_EVERY) -> None:
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.read_every = max(1, int(read_every))
        self._bad: dict[str, torch.Tensor] = {}
        self._first: dict[str, torch.Tensor] = {}

    def _accumulate(self, name: str, value: torch.Tensor, step: int) -> None:
        value = value.detach()
        bad = ~(torch.isfinite(value) & (value.abs() <= LOSS_LIMIT)).all()
        if name not in self._bad:
            self._bad[name] = torch.zeros((), dtype=torch.bool, device=value.device)
            self._first[name] = torch.full((), -1, dtype=torch.long, device=value.device)
        first = self._first[name]
        self._first[name] = torch.where(bad & (first < 0), torch.full_like(first, step), first)
        self._bad[name] = self._bad[name] | bad

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step) - 1  # the step just taken
        if isinstance(outputs, dict):
            if outputs.get("loss") is not None:
                self._accumulate("loss", outputs["loss"], step)
            for name, value in (outputs.get("terms") or {}).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    self._accumulate(f"loss term '{name}'", value, step)
        elif isinstance(outputs, torch.Tensor):
            self._accumulate("loss", outputs, step)
        done = int(trainer.global_step)
        due = (
            pl_module.device.type == "cpu"
            or done % self.read_every == 0
            or done % self.checkpoint_every == 0
            or done >= int(trainer.max_steps)
        )
        if due:
            self.check(pl_module)

    def check(self, pl_module: Any) -> None:
        """Read the flags (a host sync) and check the weights; raise on the first bad value."""
        if self._bad:
            names = list(self._bad)
            flags = torch.stack([self._bad[n] for n in names]).cpu()
            if bool(flags.any()):
                firsts = torch.stack([self._first[n] for n in names]).cpu()
                bad = [(int(firsts[i]), names[i]) for i in range(len(names)) if flags[i]]
                step, name = min(bad, key=lambda t: (t[0], t[1] != "loss"))
                raise diverged(step, name, f"nan, inf or above {LOSS_LIMIT:g} in magnitude")
        check_weights(pl_module, int(pl_module.trainer.global_step))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.check(pl_module)


def check_weights(module: torch.nn.Module, step: int) -> None:
    """One-line error when any parameter of ``module`` holds NaN or inf (one host sync)."""
    params = [p for p in module.parameters() if p.is_floating_point()]
    if not params:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
    if not bool(finite.all()):
        names = [n for n, p in module.named_parameters() if p.is_floating_point()]
        first = names[int((~finite).nonzero()[0])]
        raise diverged(step, f"weight '{first}'", "nan or inf")


class StopOnSignal(L.Callback):
    """Turn SIGTERM / SIGINT into a clean stop at the end of the current step.

    The handler only records the signal; at the end of the step the trainer is told to stop, so
    the step is logged and Lightning finishes as after a last step. The lifecycle then saves
    ``last.ckpt`` and raises :class:`RunInterrupted` (:meth:`raise_if_stopped`).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_by: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.received is not None and self.stopped_by is None:
            self.stopped_by = self.received
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def raise_if_stopped(self, step: int) -> None:
        """After the checkpoint is saved: :class:`RunInterrupted` if a signal stopped the run."""
        if self.stopped_by is not None:
            raise RunInterrupted(self.stopped_by, step, saved=True)
