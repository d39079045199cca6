"""``histodrl pretrain`` as a task of the run lifecycle: data, step count, method, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histodrl.commands.pretrain import PretrainOptions
from histodrl.runs.lifecycle import Launch, LightningTask, run_task
from histodrl.runs.sampling import dataset_len, planned_steps, step_loader


class PretrainTask(LightningTask[PretrainOptions]):
    options_class = PretrainOptions

    def __init__(self) -> None:
        self.dataset: Any = None
        self.monitor_sample: Any = None

    def resolve(self, options: PretrainOptions) -> PretrainOptions:
        return options.resolved()

    def prepare(self, options: PretrainOptions, resume: bool) -> None:
        from histodrl.data.sources import pretrain_dataset

        self.dataset = pretrain_dataset(
            options.data,
            crop=int(options.crop),  # type: ignore[arg-type]
            seed=options.seed,
            min_tissue=options.min_tissue,
            mpp=options.mpp,
            level=options.level,
        )
        if options.monitor is not None:  # read now: a bad --monitor loses nothing
            from histodrl.pretext.monitor import load_monitor_sample

            self.monitor_sample = load_monitor_sample(
                options.monitor,
                crop=int(options.crop),  # type: ignore[arg-type]
                images=options.monitor_images,
            )

    def description(self, options: PretrainOptions) -> str:
        return str(getattr(self.dataset, "description", options.data))

    def total_steps(self, options: PretrainOptions, world_size: int) -> int:
        per_epoch = dataset_len(self.dataset) // (options.batch_size * world_size)
        return planned_steps(max(1, per_epoch), options.epochs, options.max_steps)

    def callbacks(self, options: PretrainOptions) -> list[Any]:
        if self.monitor_sample is None:
            return []
        from histodrl.pretext.monitor import RepresentationMonitor

        return [RepresentationMonitor(self.monitor_sample, options.monitor_every)]

    def module(self, options: PretrainOptions, total_steps: int) -> Any:
        from histodrl.pretext import method_class

        return method_class(options.method)(options)

    def loader(self, module: Any, options: PretrainOptions, total_steps: int) -> Any:
        from histodrl.data.crops import EpochSeeded

        dataset = module.training_dataset(self.dataset)
        return step_loader(
            module.trainer,
            dataset,
            batch_size=options.batch_size,
            total_steps=total_steps,
            seed=options.seed,
            num_workers=int(options.num_workers or 0),
            epoch_indices=isinstance(dataset, EpochSeeded),
        )

    def finish(self, run: Path, options: PretrainOptions, result: Any) -> int:
        from histodrl.pretext.base import export_run

        path = export_run(run)
        print(f"histodrl: wrote {path} and {run / 'MODEL_CARD.md'}")
        if options.monitor is not None:
            from histodrl.pretext.monitor import write_monitor_figure

            figure = write_monitor_figure(run, title=f"{options.method}: monitor {options.monitor}")
            if figure is not None:
                print(f"histodrl: wrote {figure}")
        return 0


def run_pretrain(options: PretrainOptions, launch: Launch = Launch()) -> int:
    """Pretrain an encoder into ``options.out`` (see :mod:`histodrl.runs.lifecycle`)."""
    return run_task(PretrainTask(), options, launch)
