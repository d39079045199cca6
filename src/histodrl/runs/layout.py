"""The run folder: its file names, how it is created, and the record of how it was made.

```
RUN/config.yaml            every option written out (reusable with --config) + derived facts
RUN/checkpoints/last.ckpt  the last checkpoint (always saved after the last step)
RUN/metrics.csv            logged values (kept and trimmed on --resume)
RUN/encoder.safetensors    pretraining: the trunk, torchvision key names
RUN/MODEL_CARD.md          pretraining: method, data, settings, versions, final values
RUN/metrics.json, report.md, figures/   downstream results
```
These names are defined here only.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import yaml

from histodrl import __version__
from histodrl.commands.options import from_config, read_yaml, to_config
from histodrl.errors import UserInputError
from histodrl.io import atomic_write_text

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_CSV = "metrics.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
ENCODER_FILE = "encoder.safetensors"
MODEL_CARD_FILE = "MODEL_CARD.md"


def last_checkpoint(run: str | os.PathLike[str]) -> Path:
    return Path(run) / CHECKPOINT_DIR / LAST_CHECKPOINT


def is_launcher_process() -> bool:
    """True in the process the user started; False in the extra processes a DDP launcher starts.

    Only the launcher prepares (or empties) the run folder and writes its config.
    """
    for var in ("SLURM_PROCID", "RANK"):
        if os.environ.get(var, "0") != "0":
            return False
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def write_config(run: Path, options: Any, derived: dict[str, Any] | None = None) -> None:
    """Write ``RUN/config.yaml`` atomically: every option, then the run's derived facts."""
    text = yaml.safe_dump(to_config(options, derived), sort_keys=True)
    atomic_write_text(Path(run) / CONFIG_FILE, text)


def read_run_config(run: str | os.PathLike[str], cls: type) -> tuple[Any, dict[str, Any]]:
    """A run's options (as ``cls``) and its derived facts (``total_steps``, ...).

    Raises:
        UserInputError: no ``config.yaml`` (not a run folder) or a bad one.
    """
    from histodrl.commands.options import DERIVED_KEYS

    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: not found (is {run} a histodrl run folder?)")
    facts = {k: v for k, v in read_yaml(path).items() if k in DERIVED_KEYS}
    return from_config(cls, path), facts


def versions() -> dict[str, str]:
    """Versions worth recording in a model card."""
    import lightning
    import torch

    return {
        "histodrl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda": str(torch.version.cuda),
    }
