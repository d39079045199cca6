"""The step-indexed batch sampler and the run length rule."""

import pytest

from histodrl.runs.sampling import StepBatchSampler, planned_steps


def test_step_sampler_resumes_where_it_stopped():
    full = StepBatchSampler(dataset_len=10, batch_size=3, total_steps=7, seed=1)
    batches = list(full)
    assert len(batches) == 7
    resumed = StepBatchSampler(dataset_len=10, batch_size=3, total_steps=7, seed=1)
    resumed.start_step_fn = lambda: 4
    assert list(resumed) == batches[4:]
    # Each epoch (3 steps of 3) is a permutation: no index repeats inside an epoch.
    first_epoch = sum(batches[:3], [])
    assert len(set(first_epoch)) == 9


def test_step_sampler_gives_each_process_its_own_part():
    ranks = [StepBatchSampler(16, 2, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    a, b = (list(s) for s in ranks)
    for x, y in zip(a, b):
        assert not set(x) & set(y)


def test_planned_steps_max_steps_alone_sets_the_length_and_caps_epochs():
    assert planned_steps(per_epoch=10, epochs=None, max_steps=7) == 7
    assert planned_steps(per_epoch=10, epochs=2.0, max_steps=None) == 20
    assert planned_steps(per_epoch=10, epochs=2.0, max_steps=7) == 7
    assert planned_steps(per_epoch=10, epochs=0.01, max_steps=None) == 1
    with pytest.raises(ValueError):
        planned_steps(per_epoch=10, epochs=None, max_steps=None)
