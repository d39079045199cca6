"""The rules of a ``histodrl classify`` run: its length, its batch, its validations, its options."""

import pytest

from histodrl.commands.classify import ClassifyOptions
from histodrl.downstream.classify import (
    classify_batch_size,
    training_length,
    validation_interval,
)
from histodrl.errors import UserInputError


def test_training_length_counts_steps_with_a_floor_for_tiny_subsets():
    # 0.01 % of PCam: 26 patches at batch 26 is one step per epoch; the floor takes over.
    assert training_length(26, 26, 1, epochs=30, min_steps=1000) == 1000
    # 100 % of PCam: 2048 steps per epoch.
    assert training_length(262_144, 128, 1, epochs=30, min_steps=1000) == 30 * 2048
    assert training_length(262_144, 128, 2, epochs=30, min_steps=1000) == 30 * 1024
    assert training_length(100, 32, 1, epochs=2.5, min_steps=0) == 7
    assert training_length(262_144, 128, 1, epochs=30, min_steps=1000, max_steps=500) == 500
    with pytest.raises(ValueError, match="n_labelled=10"):
        training_length(10, 8, 2, epochs=1, min_steps=0)


def test_batch_is_the_whole_subset_when_it_is_smaller_than_requested():
    assert classify_batch_size(128, 26, 1) == 26
    assert classify_batch_size(128, 26, 2) == 13
    assert classify_batch_size(128, 262_144, 1) == 128
    with pytest.raises(UserInputError, match="3 labelled patches for 2 process"):
        classify_batch_size(128, 3, 2)


def test_validations_default_to_twenty_per_run():
    assert validation_interval(None, 1000) == 50
    assert validation_interval(None, 61_440) == 3072
    assert validation_interval(None, 10) == 1
    assert validation_interval(None, 41) == 3
    assert validation_interval(7, 1000) == 7


@pytest.mark.parametrize(
    "key, value, flag",
    [
        ("label_fraction", 0.0, "--label-fraction 0"),
        ("label_fraction", 1.5, "--label-fraction 1.5"),
        ("dropout", 1.0, "--dropout 1"),
        ("batch_size", 1, "--batch-size 1"),
        ("epochs", 0.0, "--epochs 0"),
        ("val_every", 0, "--val-every 0"),
    ],
)
def test_bad_options_name_the_value(key, value, flag):
    with pytest.raises(UserInputError) as info:
        ClassifyOptions(data="pcam:unused", out="unused", **{key: value})
    assert flag in str(info.value) and "\n" not in str(info.value)


def test_the_crop_defaults_to_the_data_and_pcam_keeps_its_96_px():
    from histodrl.downstream.classify import ClassifyTask

    pcam = ClassifyOptions(data="pcam:unused", out="unused")
    assert pcam.crop is None and pcam.tile_size == 96
    assert ClassifyTask().resolve(pcam).crop == 96
    folder = ClassifyOptions(data="folder:unused", out="unused")
    assert ClassifyTask().resolve(folder).crop == 224
    assert ClassifyOptions(data="folder:unused", out="unused", crop=64).tile_size == 64
    assert ClassifyOptions(data="pcam:unused", out="unused", crop=96).tile_size == 96
    with pytest.raises(UserInputError, match="--crop 64: pcam"):
        ClassifyOptions(data="pcam:unused", out="unused", crop=64)
    with pytest.raises(UserInputError, match="expected a sum below 1"):
        ClassifyOptions(data="folder:unused", out="unused", val_fraction=0.3, test_fraction=0.7)


def test_the_split_defaults_are_those_of_the_data_layer():
    from histodrl.commands import classify as options
    from histodrl.data import labelled

    assert options.DEFAULT_VAL_FRACTION == labelled.DEFAULT_CLASSIFY_VAL_FRACTION
    assert options.DEFAULT_TEST_FRACTION == labelled.DEFAULT_CLASSIFY_TEST_FRACTION
    assert options.DEFAULT_CROPS["pcam"] == labelled.DEFAULT_CROP
