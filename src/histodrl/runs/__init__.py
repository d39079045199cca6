"""The run lifecycle shared by every training command (see :mod:`histodrl.runs.lifecycle`).

- :mod:`~histodrl.runs.layout`: the run folder's file names, creating it, ``config.yaml``.
- :mod:`~histodrl.runs.sampling`: seeds and the step-indexed batch sampler (exact resume).
- :mod:`~histodrl.runs.trainer`: the Lightning trainer, atomic checkpoints, ``metrics.csv``.
- :mod:`~histodrl.runs.lifecycle`: resolve, prepare, open the folder, train, finish.
"""
