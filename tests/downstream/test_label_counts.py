"""``--label-count``: exact, seeded, stratified label subsets for segment and classify."""

from types import SimpleNamespace

import numpy as np
import pytest

from histodrl.cli import build_parser, options_from_args
from histodrl.commands.classify import ClassifyOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.downstream.evaluation import count_subset_indices, labelled_subset
from histodrl.downstream.segment_data import training_images
from histodrl.downstream.subsets import subset_indices
from histodrl.errors import UserInputError


@pytest.mark.parametrize(("n", "count"), [(10, 1), (10, 3), (20, 7), (30, 30), (7, 4)])
def test_an_unstratified_count_is_the_subset_of_its_fraction(n, count):
    for seed in range(4):
        ours = count_subset_indices(n, count, seed)
        assert len(ours) == count and list(ours) == sorted(set(ours.tolist()))
        np.testing.assert_array_equal(ours, subset_indices(n, count / n, seed))


def test_a_stratified_count_is_exact_proportional_and_has_every_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    for count in (3, 4, 10, 11, 57, 100):
        chosen = count_subset_indices(len(labels), count, seed=5, labels=labels)
        assert len(chosen) == count
        per_class = np.bincount(labels[chosen], minlength=3)
        assert (per_class >= 1).all()
        assert np.abs(per_class - count * np.array([0.5, 0.3, 0.2])).max() < 1.5
        np.testing.assert_array_equal(
            chosen, count_subset_indices(len(labels), count, seed=5, labels=labels)
        )
    # A rare class still gets its one example; the others share the rest.
    rare = np.array([0] * 98 + [1] * 2)
    chosen = count_subset_indices(100, 4, seed=0, labels=rare)
    assert np.bincount(rare[chosen]).tolist() == [3, 1]
    assert not np.array_equal(
        count_subset_indices(100, 10, seed=0, labels=labels[:100]),
        count_subset_indices(100, 10, seed=1, labels=labels[:100]),
    )


def test_counts_out_of_range_are_one_line_errors():
    with pytest.raises(UserInputError, match="--label-count 11: expected at most 10"):
        count_subset_indices(10, 11, 0, what="training images")
    with pytest.raises(UserInputError, match="expected at least 3, one per class"):
        count_subset_indices(9, 2, 0, labels=np.array([0, 1, 2] * 3))
    with pytest.raises(UserInputError, match="--label-count 0"):
        count_subset_indices(9, 0, 0)


def test_labelled_subset_takes_a_count_instead_of_the_fraction():
    labels = np.array([0, 1] * 20)
    chosen = labelled_subset(labels, 1.0, seed=2, count=6)
    assert chosen.dtype == np.int64 and len(chosen) == 6
    assert np.bincount(labels[chosen]).tolist() == [3, 3]
    np.testing.assert_array_equal(
        labelled_subset(labels, 0.5, 2), subset_indices(40, 0.5, 2, labels)
    )
    with pytest.raises(UserInputError, match="training examples"):
        labelled_subset(labels, 1.0, seed=2, count=41)


class _Split:
    def __init__(self, grades):
        self.records = [SimpleNamespace(name=f"img_{i}", grade=g) for i, g in enumerate(grades)]

    def __len__(self):
        return len(self.records)


def test_training_images_take_a_count_stratified_by_grade():
    split = _Split(["benign"] * 6 + ["malignant"] * 4)
    chosen = training_images(split, 1.0, seed=3, count=4)
    grades = [split.records[i].grade for i in chosen]
    assert len(chosen) == 4 and sorted(grades) == ["benign"] * 2 + ["malignant"] * 2
    one = training_images(split, 1.0, seed=3, count=1)  # fewer images than grades: unstratified
    np.testing.assert_array_equal(one, count_subset_indices(10, 1, 3))
    ungraded = _Split([None] * 10)
    np.testing.assert_array_equal(
        training_images(ungraded, 1.0, seed=4, count=3), training_images(ungraded, 0.3, seed=4)
    )
    with pytest.raises(UserInputError, match="at most 10, the number of training images"):
        training_images(split, 1.0, seed=3, count=11)


@pytest.mark.parametrize("command", ["segment", "classify"])
def test_label_count_is_an_option_and_excludes_a_fraction(command, tmp_path):
    parser = build_parser()
    base = [command, "--data", "glas:x" if command == "segment" else "pcam:x", "--out", "r"]
    args = parser.parse_args([*base, "--label-count", "5"])
    options, _ = options_from_args(args._command, args)
    assert options.label_count == 5 and options.label_fraction == 1.0
    cls = SegmentOptions if command == "segment" else ClassifyOptions
    assert cls(data="x", out="r").label_count is None
    with pytest.raises(UserInputError, match="--label-count 5 and --label-fraction 0.5"):
        cls(data="x", out="r", label_count=5, label_fraction=0.5)
    with pytest.raises(UserInputError, match="--label-count 0"):
        cls(data="x", out="r", label_count=0)
