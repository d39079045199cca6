"""The network and LightningModule of ``histodrl classify``: seeded initialisation, dropout and
augmentation, the model-selection state in checkpoints."""

import io

import pytest
import torch

from histodrl.commands.classify import ClassifyOptions
from histodrl.data.augment import draw_crop_boxes
from histodrl.downstream.classifier import (
    CROP_RATIO,
    CROP_SCALE,
    ClassifierModule,
    build_classifier,
    dropout_with_generator,
)
from histodrl.downstream.evaluation import eval_input

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(**changes) -> ClassifyOptions:
    values = {"data": "pcam:unused", "out": "unused", "width": 0.125, "label_fraction": 0.5}
    return ClassifyOptions(**{**values, **changes})


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
    a = ClassifierModule(_options(), total_steps=10, val_every=5)
    b = ClassifierModule(_options(), total_steps=10, val_every=5)
    c = ClassifierModule(_options(seed=1), total_steps=10, val_every=5)
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
    with pytest.raises(ValueError, match="resnet"):
        build_classifier("resnet", 0.125, 0.5, seed=0)


def test_the_module_is_built_from_the_options_and_saves_them_as_hyperparameters():
    options = _options(lr=0.01, dropout=0.25, seed=2)
    module = ClassifierModule(options, total_steps=10, val_every=5)
    assert module.options is options
    assert module.hparams["lr"] == 0.01 and module.hparams["seed"] == 2
    assert module.model.dropout.p == 0.25
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.01
    reference = build_classifier("vgg19_bn", 0.125, 0.25, seed=2).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in module.model.state_dict().items())
    assert [module.validation_due(s) for s in (4, 5, 9, 10)] == [False, True, False, True]


def test_the_selected_model_survives_a_checkpoint_round_trip():
    saved = ClassifierModule(_options(), total_steps=10, val_every=5)
    saved.best_accuracy, saved.best_step = 0.75, 5
    saved.val_history = [(5, 0.75), (10, 0.5)]
    saved.best_state = {k: v.clone() for k, v in saved.model.state_dict().items()}
    checkpoint: dict = {}
    saved.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = ClassifierModule(_options(), total_steps=10, val_every=5)
    loaded.on_load_checkpoint(torch.load(buffer, weights_only=True))
    assert (loaded.best_accuracy, loaded.best_step) == (0.75, 5)
    assert loaded.val_history == [(5, 0.75), (10, 0.5)]
    assert loaded.best_state.keys() == saved.best_state.keys()
    assert all(torch.equal(loaded.best_state[k], v) for k, v in saved.best_state.items())


def test_the_head_has_one_output_per_class_and_two_classes_are_the_default():
    three = build_classifier("vgg19_bn", 0.125, 0.5, seed=3, num_classes=3)
    assert three.fc.weight.shape[0] == 3
    two = build_classifier("vgg19_bn", 0.125, 0.5, seed=3).state_dict()
    explicit = build_classifier("vgg19_bn", 0.125, 0.5, seed=3, num_classes=2).state_dict()
    assert all(torch.equal(two[k], explicit[k]) for k in two)
    module = ClassifierModule(_options(), total_steps=10, val_every=5, num_classes=4)
    assert module.model(eval_input(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))).shape == (2, 4)
