"""The pieces of ``histodrl classify``: lengths, batches, seeded dropout and augmentation, evaluation."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from histodrl.data.augment import IMAGENET_MEAN, IMAGENET_STD, draw_crop_boxes
from histodrl.downstream.classify import (
    CROP_RATIO,
    CROP_SCALE,
    ClassifierModule,
    build_classifier,
    check_options,
    classification_scores,
    classify_batch_size,
    dropout_with_generator,
    eval_input,
    eval_loader,
    predict_probabilities,
    read_subset,
    training_length,
    write_subset,
)
from histodrl.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyPatches(Dataset):
    """uint8 (3, 32, 32) patches with 0/1 labels, fetched one at a time."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        self.y = torch.from_numpy(rng.integers(0, 2, n))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _config(**overrides):
    config = {
        "arch": "vgg19_bn",
        "width": 0.125,
        "dropout": 0.5,
        "seed": 0,
        "lr": 1e-3,
        "label_fraction": 0.5,
        "epochs": 1.0,
        "min_steps": 0,
        "batch_size": 8,
    }
    config.update(overrides)
    return config


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


@pytest.mark.parametrize(
    "key, value, flag",
    [
        ("label_fraction", 0.0, "--label-fraction 0.0"),
        ("label_fraction", 1.5, "--label-fraction 1.5"),
        ("dropout", 1.0, "--dropout 1.0"),
        ("batch_size", 1, "--batch-size 1"),
        ("epochs", 0.0, "--epochs 0.0"),
        ("val_every", 0, "--val-every 0"),
    ],
)
def test_bad_options_name_the_value(key, value, flag):
    with pytest.raises(UserInputError) as info:
        check_options(_config(**{key: value}))
    assert flag in str(info.value) and "\n" not in str(info.value)


def test_dropout_mask_comes_from_the_generator():
    x = torch.arange(1, 401, dtype=torch.float32).reshape(4, 100)
    a = dropout_with_generator(x, 0.3, torch.Generator().manual_seed(5))
    b = dropout_with_generator(x, 0.3, torch.Generator().manual_seed(5))
    c = dropout_with_generator(x, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Reference: element by element, with the same uniform draws.
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    expected = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if u[i, j] >= 0.3:
                expected[i, j] = x[i, j] / 0.7
    torch.testing.assert_close(a, expected)
    assert dropout_with_generator(x, 0.0, None) is x


def test_every_random_crop_keeps_the_label_defining_centre():
    # The PCam label is decided by the centre 32x32 pixels (rows/cols 32..63).
    boxes = draw_crop_boxes(
        20_000, 96, 96, scale=CROP_SCALE, ratio=CROP_RATIO, generator=torch.Generator()
    )
    top, left, height, width = boxes.unbind(dim=1)
    assert bool((top <= 32).all() and (top + height >= 64).all())
    assert bool((left <= 32).all() and (left + width >= 64).all())


def test_training_batches_are_augmented_as_a_function_of_seed_and_step():
    x = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    a = ClassifierModule(_config(), total_steps=10, val_every=5)
    b = ClassifierModule(_config(), total_steps=10, val_every=5)
    c = ClassifierModule(_config(seed=1), total_steps=10, val_every=5)
    xa, ya = a.on_after_batch_transfer((x, y), 0)
    xb, _ = b.on_after_batch_transfer((x, y), 0)
    xc, _ = c.on_after_batch_transfer((x, y), 0)
    assert xa.shape == (4, 3, 96, 96) and xa.dtype == torch.float32
    assert ya.dtype == torch.long and torch.equal(ya, y)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert not torch.allclose(xa, eval_input(x))  # augmented, not just normalised


def test_classifier_initialisation_is_seeded():
    a = build_classifier("vgg19_bn", 0.125, 0.5, seed=3).state_dict()
    b = build_classifier("vgg19_bn", 0.125, 0.5, seed=3).state_dict()
    c = build_classifier("vgg19_bn", 0.125, 0.5, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    with pytest.raises(UserInputError, match="resnet"):
        build_classifier("resnet", 0.125, 0.5, seed=0)


def test_eval_input_is_imagenet_normalised():
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    mean = np.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)
    expected = (x.numpy() / 255.0 - mean) / std
    np.testing.assert_allclose(eval_input(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_predictions_match_a_patch_by_patch_loop_and_leave_batchnorm_alone():
    data = TinyPatches(10)
    model = build_classifier("vgg19_bn", 0.125, 0.5, seed=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = eval_loader(data, [9, 0, 3, 4, 5, 6, 7, 8, 1, 2], batch_size=4)
    labels, probs = predict_probabilities(model, loader, torch.device("cpu"), "32-true")
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    order = [9, 0, 3, 4, 5, 6, 7, 8, 1, 2]
    assert labels.tolist() == [int(data.y[i]) for i in order]
    model.eval()
    with torch.no_grad():
        for row, i in enumerate(order):
            logits = model(eval_input(data.x[i : i + 1]))[0].double()
            p1 = float(torch.exp(logits[1]) / torch.exp(logits).sum())
            assert probs[row] == pytest.approx(p1, abs=1e-5)


def test_scores_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    scores = classification_scores(labels, probs)
    assert scores["accuracy"] == pytest.approx(accuracy_score(labels, probs > 0.5))
    assert scores["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert classification_scores(np.ones(5, dtype=int), np.full(5, 0.9))["auc"] is None


def test_subset_file_round_trips_and_bad_lines_are_named(tmp_path):
    indices = np.array([3, 17, 262_143])
    path = write_subset(tmp_path, indices)
    assert path.read_text() == "3\n17\n262143\n"
    assert np.array_equal(read_subset(path), indices)
    path.write_text("3\nseven\n")
    with pytest.raises(UserInputError, match="line 2"):
        read_subset(path)
