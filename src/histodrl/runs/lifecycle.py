"""The one run lifecycle that ``pretrain``, ``segment``, ``classify`` and ``probe`` pass through.

A command hands :func:`run_task` a :class:`Task` (what differs between commands: how options are
resolved, the data, the step count, the module, what is written at the end) and its typed options.
The lifecycle does the rest, the same way for every command:

1. **Resolve**: a new run fills its data-dependent defaults (:meth:`Task.resolve`); a resumed run
   (``--resume``) takes its ``config.yaml``, applies what may change (runtime options such as
   ``--devices`` or ``--num-workers``, and a new ``--max-steps``), records it, and refuses any
   other option that differs, listing them.
2. **Prepare**: the task reads and checks its data (:meth:`Task.prepare`) *before* the run folder is
   created or emptied, so bad input loses nothing.
3. **Open the run folder** (launcher process only): new (``--overwrite`` to replace) or resumed
   (``metrics.csv`` trimmed back to the checkpoint's step, so redone steps are not logged twice).
4. **Train** (:class:`LightningTask`): a Lightning trainer on the run folder, the step count fixed
   (``total_steps`` in ``config.yaml``), ``config.yaml`` and the task's input lists written, the
   seed set, the module built and initialised (not on resume), fit from ``last.ckpt`` on resume,
   and **always** a final ``last.ckpt`` after the last step, whatever ``--checkpoint-every`` is.
   A task without Lightning training (:class:`Task`, e.g. ``probe``) runs :meth:`Task.execute`.
5. **Finish** on global rank 0 (:meth:`Task.finish`): exports, metrics, reports.

This module knows no method or task by name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from histodrl.commands.options import differing, show, specs, with_values
from histodrl.errors import UserInputError
from histodrl.runs.folder import OpenedRun, open_run
from histodrl.runs.layout import (
    default_workers,
    is_launcher_process,
    last_checkpoint,
    read_run_config,
    write_config,
)

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class Launch:
    """How a run is started (not part of its configuration)."""

    resume: bool = False
    overwrite: bool = False


class Task(Generic[OptionsT]):
    """What one command supplies to the lifecycle. Subclasses override the hooks they need.

    Attributes:
        options_class: the command's options class.
        resume_changeable: options (besides the runtime ones) that ``--resume`` may change.
    """

    options_class: ClassVar[type]
    resume_changeable: ClassVar[frozenset[str]] = frozenset()

    def resolve(self, options: OptionsT) -> OptionsT:
        """A new run's options with data-dependent defaults filled in (nothing written yet)."""
        return options

    def prepare(self, options: OptionsT, resume: bool) -> None:
        """Read and check the data (raise :class:`UserInputError` now, before any file is written)."""

    def description(self, options: OptionsT) -> str | None:
        """One line about the data used, recorded as ``data_description`` in ``config.yaml``."""
        return None

    def write_inputs(self, run: Path, options: OptionsT) -> None:
        """Write the run's input lists (training images, subset indices); new runs only."""

    def check_resumed(self, run: Path, options: OptionsT) -> None:
        """Check a resumed run's inputs against the data (e.g. its subset file)."""

    def execute(self, run: Path, options: OptionsT) -> Any:
        """The work of a task that does not train with Lightning (called instead of training)."""
        raise TypeError(
            f"{type(self).__name__}: a task is either a LightningTask or defines execute()"
        )

    def finish(self, run: Path, options: OptionsT, result: Any) -> Any:
        """Write the results (global rank 0 only); returns what the command returns."""
        return result


class LightningTask(Task[OptionsT], abc.ABC):
    """A task that trains a LightningModule for a fixed number of steps."""

    resume_changeable: ClassVar[frozenset[str]] = frozenset({"max_steps"})

    @abc.abstractmethod
    def total_steps(self, options: OptionsT, world_size: int) -> int:
        """Optimizer steps of the whole run on ``world_size`` processes."""

    def callbacks(self, options: OptionsT) -> list[Any]:
        return []

    @abc.abstractmethod
    def module(self, options: OptionsT, total_steps: int) -> Any:
        """The LightningModule (randomly initialised from the seed)."""

    def init_weights(self, module: Any, options: OptionsT) -> None:
        """Load starting weights (``--init``) into a new run's module; not called on resume."""

    @abc.abstractmethod
    def loader(self, module: Any, options: OptionsT, total_steps: int) -> Any:
        """The training DataLoader, built once the trainer knows this process's rank."""

    def trained(
        self, run: Path, module: Any, trainer: Any, options: OptionsT, total_steps: int
    ) -> Any:
        """What :meth:`finish` gets after training: by default the module."""
        return module


class LoaderFromTask:
    """LightningModule mixin: ``train_dataloader`` is built by the task, when the rank is known."""

    loader_factory: Any = None

    def train_dataloader(self) -> Any:
        if self.loader_factory is None:
            raise RuntimeError("set module.loader_factory before trainer.fit")
        return self.loader_factory(self)


def resumed_options(
    run: Path, task: Task[Any], options: Any
) -> tuple[Any, dict[str, Any], list[str]]:
    """A resumed run's options: its saved ones, with the options that may change taken from
    ``options``. Returns ``(options, derived facts, names of the options changed)``.

    Raises:
        UserInputError: an option that may not change differs from the run's (all are listed).
    """
    saved, facts = read_run_config(run, task.options_class)
    changeable = {s.name for s in specs(task.options_class) if s.meta.get("runtime")}
    changeable |= set(task.resume_changeable)
    changed = differing(saved, options)
    refused = [n for n in changed if n not in changeable]
    if refused:
        by_name = {s.name: s for s in specs(task.options_class)}
        listed = ", ".join(
            f"{by_name[n].label} {show(getattr(options, n))} (run: {show(getattr(saved, n))})"
            for n in refused
        )
        raise UserInputError(
            f"{run}: --resume continues the run with its own options; these differ from its "
            f"config.yaml: {listed} (drop them, or start a new run with --out)"
        )
    if not changed:
        return saved, facts, []
    return with_values(saved, **{n: getattr(options, n) for n in changed}), facts, changed


def _with_workers(options: Any) -> Any:
    if hasattr(options, "num_workers") and options.num_workers is None:
        return with_values(options, num_workers=default_workers())
    return options


def run_task(task: Task[Any], options: Any, launch: Launch = Launch()) -> Any:
    """Run ``task`` with ``options`` into the run folder ``options.out`` (see the module doc)."""
    from histodrl.runs.trainer import check_accelerator

    run = Path(options.out)
    launcher = is_launcher_process()
    if launch.resume and launch.overwrite:
        raise UserInputError("--resume and --overwrite: choose one")
    facts: dict[str, Any] = {}
    changed: list[str] = []
    if launch.resume:
        if not last_checkpoint(run).is_file():
            raise UserInputError(f"{run}: nothing to resume (expected {last_checkpoint(run)})")
        options, facts, changed = resumed_options(run, task, options)
    else:
        options = task.resolve(options)
    options = _with_workers(options)
    if hasattr(options, "accelerator"):
        check_accelerator(options.accelerator)
    task.prepare(options, launch.resume)
    if launch.resume:
        task.check_resumed(run, options)

    opened = open_run(run, overwrite=launch.overwrite, resume=launch.resume) if launcher else None
    try:
        if not isinstance(task, LightningTask):
            if opened is not None:
                write_config(run, options, _derived(task, options, None))
                task.write_inputs(run, options)
            result = task.execute(run, options)
            if opened is not None:
                opened.commit()
            result = task.finish(run, options, result)
        else:
            result = _train(task, run, options, launch, facts, changed, opened)
    except BaseException:
        if opened is not None:
            opened.rollback()
        raise
    if opened is not None:
        opened.close()
    return result


def _derived(task: Task[Any], options: Any, total: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if total is not None:
        out["total_steps"] = int(total)
    description = task.description(options)
    if description is not None:
        out["data_description"] = description
    return out


def _train(
    task: LightningTask[Any],
    run: Path,
    options: Any,
    launch: Launch,
    facts: dict[str, Any],
    changed: list[str],
    opened: OpenedRun | None,
) -> Any:
    import lightning as L
    import torch

    from histodrl.runs.trainer import checkpoint_step, trainer_for, trim_metrics
    from histodrl.runs.watch import FiniteWatch, StopOnSignal

    launcher = opened is not None
    ckpt = last_checkpoint(run)
    start = checkpoint_step(ckpt) if launch.resume else 0
    stop = StopOnSignal()
    callbacks = [
        FiniteWatch(options.checkpoint_every),
        _commit_callback(opened),
        *task.callbacks(options),
        stop,
    ]
    trainer = trainer_for(run, options, callbacks)
    if launch.resume and "total_steps" in facts and "max_steps" not in changed:
        total = int(facts["total_steps"])
    else:
        total = task.total_steps(options, trainer.world_size)
    if launch.resume and total < start:
        raise UserInputError(
            f"--max-steps {options.max_steps}: {run} is already at step {start} (expected more)"
        )
    trainer.fit_loop.epoch_loop.max_steps = total
    if launcher:
        if launch.resume:
            trim_metrics(run, start)
        if not launch.resume or changed:
            write_config(run, options, _derived(task, options, total))
        if not launch.resume:
            task.write_inputs(run, options)

    L.seed_everything(int(options.seed), workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(options.deterministic), warn_only=True)
    module = task.module(options, total)
    if not launch.resume:
        task.init_weights(module, options)
    module.loader_factory = lambda m: task.loader(m, options, total)
    trainer.fit(module, ckpt_path=str(ckpt) if launch.resume else None)
    # Lightning checkpoints every N steps; the last step is saved whatever N is.
    trainer.save_checkpoint(ckpt, weights_only=False)
    stop.raise_if_stopped(int(trainer.global_step))
    if not trainer.is_global_zero:
        return None
    return task.finish(run, options, task.trained(run, module, trainer, options, total))


def _commit_callback(opened: OpenedRun | None) -> Any:
    """A Lightning callback: the new run has started once its first step is done (``--overwrite``
    then deletes the run it replaces)."""
    import lightning as L

    class CommitOnFirstStep(L.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if opened is not None:
                opened.commit()

        on_train_end = on_train_batch_end

    return CommitOnFirstStep()
