import numpy as np
import pytest

from histodrl.downstream.subsets import subset_indices
from histodrl.errors import UserInputError


def test_smallest_paper_fraction_of_pcam_keeps_both_classes():
    labels = np.zeros(262_144, dtype=np.uint8)
    labels[::2] = 1
    idx = subset_indices(len(labels), 0.0001, seed=3, labels=labels)
    assert len(idx) == 26
    assert set(labels[idx]) == {0, 1}


def test_subset_is_seeded_sorted_and_unique():
    a = subset_indices(1000, 0.1, seed=1)
    b = subset_indices(1000, 0.1, seed=1)
    c = subset_indices(1000, 0.1, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and np.all(np.diff(a) > 0)


def test_full_fraction_is_everything_and_tiny_fraction_is_at_least_one():
    assert np.array_equal(subset_indices(7, 1.0, seed=0), np.arange(7))
    assert len(subset_indices(7, 0.0001, seed=0)) == 1


def test_rare_class_still_appears():
    labels = np.array([0] * 999 + [1])
    idx = subset_indices(1000, 0.01, seed=0, labels=labels)
    assert 1 in labels[idx]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_bad_fraction_names_the_value(fraction):
    with pytest.raises(UserInputError, match=str(fraction)):
        subset_indices(10, fraction, seed=0)
