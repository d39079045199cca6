"""The pieces of ``histodrl probe``: block names, frozen-trunk features, the linear classifiers."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from histodrl.commands.classify import PROBE_BLOCKS, ProbeOptions, parse_blocks
from histodrl.downstream.evaluation import eval_input, eval_loader
from histodrl.downstream.probe import (
    BLOCK_TAPS,
    ProbeTask,
    extract_pooled_features,
    fold_standardization,
    standardization,
    train_linear_probe,
)
from histodrl.errors import UserInputError
from histodrl.nn import vgg19_bn

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyPatches(Dataset):
    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
        self.y = torch.from_numpy(rng.integers(0, 2, n))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _blobs(n: int, dim: int, gap: float, seed: int):
    """Two Gaussian classes whose means differ by ``gap`` along the first axis, in random order."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen) * 3.0 + 5.0
    x[:, 0] += gap * y
    return x, y


def test_blocks_are_named_conv2_to_conv4_or_by_number():
    assert parse_blocks("conv2,conv3,conv4") == ["conv2", "conv3", "conv4"]
    assert parse_blocks("2, 4") == ["conv2", "conv4"]
    assert parse_blocks(["conv3", "3", "conv1"]) == ["conv3", "conv1"]
    assert [BLOCK_TAPS[b] for b in parse_blocks("2,3,4")] == ["conv2_2", "conv3_4", "conv4_4"]
    assert tuple(BLOCK_TAPS) == PROBE_BLOCKS


def test_a_probe_run_records_its_blocks_by_their_canonical_names():
    options = ProbeOptions(data="pcam:unused", out="unused", blocks="4, conv2,4")
    assert ProbeTask().resolve(options).blocks == "conv4,conv2"


@pytest.mark.parametrize("text, named", [("conv2,fc7", "fc7"), ("conv6", "conv6"), ("", "")])
def test_an_unknown_block_is_a_one_line_error_naming_it(text, named):
    with pytest.raises(UserInputError) as info:
        parse_blocks(text)
    message = str(info.value)
    assert f"'{named}'" in message and "conv2" in message and "\n" not in message


def test_features_come_from_a_frozen_trunk_whose_batchnorm_statistics_do_not_change():
    encoder = vgg19_bn(width=0.125, generator=torch.Generator().manual_seed(0))
    # Non-trivial running statistics, as a pretrained trunk has.
    with torch.no_grad():
        encoder(torch.randn(8, 3, 32, 32) + 0.5)
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    data = TinyPatches(7)
    taps = ["conv2_2", "conv3_4", "conv4_4"]
    features, labels = extract_pooled_features(
        encoder, eval_loader(data, range(7), batch_size=3), taps, torch.device("cpu"), "32-true"
    )
    assert encoder.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert labels.tolist() == data.y.tolist()

    # Reference: one patch at a time through the eval-mode trunk, pooled with numpy.
    encoder.eval()
    for i in range(7):
        with torch.no_grad():
            maps = encoder.forward_taps(eval_input(data.x[i : i + 1]), taps)
        for tap in taps:
            assert features[tap].shape == (7, encoder.tap_channels(tap))
            expected = maps[tap][0].numpy().mean(axis=(1, 2))
            np.testing.assert_allclose(features[tap][i].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_folded_weights_act_on_raw_features_like_the_standardised_ones():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=gen) * 4 + 2
    w, b = torch.randn(2, 6, generator=gen), torch.randn(2, generator=gen)
    mean, scale = standardization(x)
    raw_w, raw_b = fold_standardization(w, b, mean, scale)
    torch.testing.assert_close(x @ raw_w.T + raw_b, ((x - mean) / scale) @ w.T + b)


def test_standardization_matches_numpy_and_only_centres_constant_features():
    x = torch.tensor([[1.0, 7.0, 2.0], [3.0, 7.0, 4.0], [8.0, 7.0, 9.0]])
    mean, scale = standardization(x)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scale[[0, 2]].numpy(), x.numpy().std(axis=0)[[0, 2]], rtol=1e-6)
    assert scale[1] == 1.0


def test_probe_separates_separable_features_and_keeps_the_earliest_best_epoch():
    x, y = _blobs(300, 8, gap=40.0, seed=0)
    probe = train_linear_probe(
        x[:200], y[:200], x[200:], y[200:], epochs=8, lr=0.05, batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert probe.val_accuracy == 1.0
    assert len(probe.val_history) == 8
    assert probe.best_epoch == probe.val_history.index(max(probe.val_history)) + 1
    logits = probe.logits(x[200:])
    assert float((logits.argmax(1) == y[200:]).double().mean()) == 1.0


def test_probe_accuracy_matches_a_logistic_regression_reference():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(1200, 5, gap=3.0, seed=1)
    train_x, train_y = x[:600], y[:600]
    valid_x, valid_y = x[600:900], y[600:900]
    test_x, test_y = x[900:], y[900:]
    probe = train_linear_probe(
        train_x, train_y, valid_x, valid_y, epochs=40, lr=1e-2, batch_size=64,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    ours = float(((probe.probabilities(test_x) > 0.5).long() == test_y).double().mean())
    reference = LogisticRegression(C=1e4, max_iter=1000).fit(train_x.numpy(), train_y.numpy())
    theirs = reference.score(test_x.numpy(), test_y.numpy())
    assert theirs > 0.6  # the task is learnable but not trivial
    assert abs(ours - theirs) <= 0.03


def test_probe_is_a_function_of_its_generator():
    x, y = _blobs(120, 4, gap=2.0, seed=2)

    def fit(seed):
        gen = torch.Generator().manual_seed(seed)
        return train_linear_probe(
            x[:80], y[:80], x[80:], y[80:], epochs=3, batch_size=16, generator=gen
        )

    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"epochs": 0}, "epochs=0"), ({"lr": 0.0}, "lr=0.0"), ({"batch_size": 0}, "batch_size=0")],
)
def test_bad_probe_arguments_name_the_value(kwargs, match):
    x, y = _blobs(10, 3, gap=1.0, seed=0)
    with pytest.raises(ValueError, match=match):
        train_linear_probe(x, y, x, y, **kwargs)


def test_a_probe_has_one_output_per_class():
    gen = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (300,), generator=gen)
    x = torch.randn(300, 6, generator=gen)
    x[:, :3] += 6.0 * torch.nn.functional.one_hot(y, 3)
    probe = train_linear_probe(
        x[:200], y[:200], x[200:], y[200:], epochs=5, lr=0.05, batch_size=32,
        generator=torch.Generator().manual_seed(0), num_classes=3,
    )  # fmt: skip
    assert probe.weight.shape == (3, 6) and probe.bias.shape == (3,)
    assert probe.val_accuracy > 0.95
    probs = probe.class_probabilities(x[200:])
    assert probs.shape == (100, 3)
    torch.testing.assert_close(probe.probabilities(x[200:]), probs[:, 1])
    with pytest.raises(ValueError, match="num_classes=2"):
        train_linear_probe(x, y, x, y)  # labels up to 2 need three outputs
    with pytest.raises(ValueError, match="num_classes=1"):
        train_linear_probe(x, y, x, y, num_classes=1)


def test_a_probe_run_records_the_crop_of_its_data():
    assert ProbeTask().resolve(ProbeOptions(data="pcam:unused", out="o")).crop == 96
    assert ProbeTask().resolve(ProbeOptions(data="folder:unused", out="o")).crop == 224
    assert ProbeTask().resolve(ProbeOptions(data="folder:unused", out="o", crop=64)).crop == 64
