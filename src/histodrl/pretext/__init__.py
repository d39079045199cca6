"""Pretraining methods: DRL and the paper's pretext baselines, on one shared LightningModule base."""

from __future__ import annotations

import importlib

from histodrl.errors import UserInputError
from histodrl.pretext.options import METHODS


def method_class(name: str) -> type:
    """The LightningModule class of pretext method ``name`` (imported on first use)."""
    if name not in METHODS:
        raise UserInputError(f"--method {name!r}: expected one of {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)
