import numpy as np
import pytest
import torch

from histodrl.nn.heads import PatchClassifier, pooled_taps
from histodrl.nn.vgg import TAP_NAMES, vgg19_bn


def test_patch_classifier_is_gap_of_pool5_then_linear_in_eval_mode():
    torch.manual_seed(0)
    encoder = vgg19_bn(0.125)
    model = PatchClassifier(encoder, num_classes=3).eval()
    x = torch.randn(4, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (4, 3)
    pool5 = encoder(x).detach().double().numpy()
    assert pool5.shape == (4, 64, 3, 3)
    features = pool5.mean(axis=(2, 3))
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    np.testing.assert_allclose(logits.detach().numpy(), features @ w.T + b, rtol=1e-4, atol=1e-6)


def test_patch_classifier_applies_dropout_only_in_training():
    torch.manual_seed(1)
    model = PatchClassifier(vgg19_bn(0.125), dropout=0.9)
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.equal(first, model(x))  # training-mode BN is deterministic; dropout is not


def test_patch_classifier_linear_starts_like_torchvision():
    model = PatchClassifier(vgg19_bn(), generator=torch.Generator().manual_seed(0))
    assert model.fc.weight.shape == (2, 512)
    assert abs(model.fc.weight.std().item() - 0.01) < 0.001
    assert torch.count_nonzero(model.fc.bias) == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_invalid_classifier_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PatchClassifier(vgg19_bn(0.125), **kwargs)


def test_pooled_taps_are_spatial_means_of_the_taps():
    torch.manual_seed(2)
    encoder = vgg19_bn(0.125).eval()
    x = torch.randn(2, 3, 64, 64)
    names = ["conv4_4", "conv2_2", "conv3_4"]
    with torch.no_grad():
        pooled = pooled_taps(encoder, x, names)
        taps = encoder.forward_taps(x, TAP_NAMES)
    assert list(pooled) == names
    for name in names:
        assert pooled[name].shape == (2, encoder.tap_channels(name))
        expected = taps[name].double().numpy().mean(axis=(2, 3))
        np.testing.assert_allclose(pooled[name].numpy(), expected, rtol=1e-5, atol=1e-6)
