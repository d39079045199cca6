import math

import pytest
import torch

from histodrl.nn.vgg import TAP_NAMES, VGG, load_torchvision_weights, vgg19, vgg19_bn

# torchvision cfg "E", written out by hand: features index of every 3x3 conv, and its channels.
BN_CONV_INDICES = [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49]
PLAIN_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
CONV_OUT = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
CONV_IN = [3, 64, 64, 128, 128, 256, 256, 256, 256] + [512] * 7


def torchvision_vgg19_bn_keys() -> list[tuple[str, tuple[int, ...]]]:
    keys = []
    for i, c_in, c_out in zip(BN_CONV_INDICES, CONV_IN, CONV_OUT):
        keys += [(f"features.{i}.weight", (c_out, c_in, 3, 3)), (f"features.{i}.bias", (c_out,))]
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys.append((f"features.{i + 1}.{name}", (c_out,)))
        keys.append((f"features.{i + 1}.num_batches_tracked", ()))
    return keys


def torchvision_vgg19_keys() -> list[tuple[str, tuple[int, ...]]]:
    keys = []
    for i, c_in, c_out in zip(PLAIN_CONV_INDICES, CONV_IN, CONV_OUT):
        keys += [(f"features.{i}.weight", (c_out, c_in, 3, 3)), (f"features.{i}.bias", (c_out,))]
    return keys


def key_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_vgg19_bn_state_dict_has_torchvision_keys_and_shapes_in_order():
    with torch.device("meta"):  # shapes only: skip allocating and initialising 20M weights
        model = vgg19_bn()
    sd = model.state_dict()
    assert key_shapes(model) == torchvision_vgg19_bn_keys()
    assert len(sd) == 16 * 2 + 16 * 5
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["features.49.weight"].shape == (512, 512, 3, 3)
    assert sd["features.50.running_var"].shape == (512,)


def test_vgg19_state_dict_has_torchvision_keys_and_shapes_in_order():
    with torch.device("meta"):
        model = vgg19()
    assert key_shapes(model) == torchvision_vgg19_keys()
    assert model.state_dict()["features.34.weight"].shape == (512, 512, 3, 3)


def test_features_layout_is_conv_bn_relu_and_maxpool_like_torchvision():
    features = vgg19_bn(0.125).features
    assert len(features) == 53
    pools = [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [6, 13, 26, 39, 52]
    for i in BN_CONV_INDICES:
        conv, bn, relu = features[i], features[i + 1], features[i + 2]
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert isinstance(bn, torch.nn.BatchNorm2d)
        assert isinstance(relu, torch.nn.ReLU) and relu.inplace
    assert [
        i for i, m in enumerate(vgg19(0.125).features) if isinstance(m, torch.nn.MaxPool2d)
    ] == [
        4,
        9,
        18,
        27,
        36,
    ]


@pytest.mark.parametrize(
    ("width", "expected"),
    [(0.125, [8, 16, 32, 64]), (0.5, [32, 64, 128, 256]), (0.01, [1, 1, 3, 5])],
)
def test_width_scales_channels_as_max_1_round_c_times_width(width, expected):
    model = vgg19_bn(width)
    assert [model.tap_channels(n) for n in TAP_NAMES] == expected + [expected[-1]] * 2
    outs = {model.features[i].out_channels for i in BN_CONV_INDICES[8:]}
    assert outs == {expected[-1]}


def test_tap_indices_match_method_table():
    assert [vgg19_bn(0.125).tap_index(n) for n in TAP_NAMES] == [5, 12, 25, 38, 51, 52]
    assert [vgg19(0.125).tap_index(n) for n in TAP_NAMES] == [3, 8, 17, 26, 35, 36]


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("size", [64, 96])
def test_tap_shapes_channels_and_strides(batch_norm, size):
    model = VGG(batch_norm=batch_norm, width=0.125)
    x = torch.randn(2, 3, size, size)
    taps = model.forward_taps(x, TAP_NAMES)
    assert list(taps) == list(TAP_NAMES)
    assert [model.tap_stride(n) for n in TAP_NAMES] == [1, 2, 4, 8, 16, 32]
    for name, fmap in taps.items():
        side = size // model.tap_stride(name)
        assert fmap.shape == (2, model.tap_channels(name), side, side)
    assert [taps[n].shape[-1] for n in TAP_NAMES] == (
        [64, 32, 16, 8, 4, 2] if size == 64 else [96, 48, 24, 12, 6, 3]
    )


@pytest.mark.parametrize("batch_norm", [True, False])
def test_forward_taps_equal_activations_hooked_from_the_full_sequential(batch_norm):
    torch.manual_seed(0)
    model = VGG(batch_norm=batch_norm, width=0.125).eval()
    x = torch.randn(2, 3, 64, 64)
    hooked = {}
    handles = [
        model.features[model.tap_index(name)].register_forward_hook(
            lambda _m, _i, out, name=name: hooked.__setitem__(name, out.clone())
        )
        for name in TAP_NAMES
    ]
    full = model.features(x)
    for h in handles:
        h.remove()
    taps = model.forward_taps(x, list(reversed(TAP_NAMES)))
    assert list(taps) == list(reversed(TAP_NAMES))
    for name in TAP_NAMES:
        torch.testing.assert_close(taps[name], hooked[name], rtol=0, atol=0)
        assert (taps[name] >= 0).all()  # post-ReLU (pool5 is a max of post-ReLU values)
    torch.testing.assert_close(model(x), full, rtol=0, atol=0)


def test_forward_taps_stops_after_the_deepest_requested_tap():
    model = vgg19_bn(0.125)
    called = []
    for i, m in enumerate(model.features):
        m.register_forward_pre_hook(lambda _m, _i, i=i: called.append(i))
    taps = model.forward_taps(torch.randn(1, 3, 32, 32), ["conv2_2", "conv4_4"])
    assert set(taps) == {"conv2_2", "conv4_4"}
    assert called == list(range(39))  # conv4_4 ends at 38; pool4 (39) and block 5 never run


def test_truncated_trunk_shares_modules_and_equals_the_tap():
    model = vgg19_bn(0.125).eval()
    trunk = model.truncated("conv4_4")
    assert len(trunk) == 39
    assert trunk[0] is model.features[0]
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(trunk(x), model.forward_taps(x, ["conv4_4"])["conv4_4"])


def test_unknown_or_empty_tap_names_raise_value_error():
    model = vgg19_bn(0.125)
    with pytest.raises(ValueError, match="conv4_3"):
        model.forward_taps(torch.randn(1, 3, 32, 32), ["conv4_3"])
    with pytest.raises(ValueError, match="names"):
        model.forward_taps(torch.randn(1, 3, 32, 32), [])
    with pytest.raises(ValueError, match="pool4"):
        model.tap_channels("pool4")


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_invalid_width_raises_value_error_naming_it(width):
    with pytest.raises(ValueError, match="width"):
        VGG(width=width)


def test_channels_last_model_gives_the_same_taps_in_channels_last_layout():
    torch.manual_seed(0)
    model = vgg19_bn(0.125).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model.forward_taps(x, TAP_NAMES)
    model = model.to(memory_format=torch.channels_last)
    for inp in (x, x.to(memory_format=torch.channels_last)):
        taps = model.forward_taps(inp, TAP_NAMES)
        for name in TAP_NAMES:
            torch.testing.assert_close(taps[name], expected[name], rtol=1e-4, atol=1e-5)
            assert taps[name].is_contiguous(memory_format=torch.channels_last)


def test_initialisation_is_torchvision_kaiming_normal_fan_out_with_unit_batch_norm():
    model = vgg19_bn(generator=torch.Generator().manual_seed(0))
    conv = model.features[49]
    fan_out = conv.out_channels * 3 * 3
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2.0 / fan_out)) < 0.01 * math.sqrt(2.0 / fan_out)
    assert abs(conv.weight.mean().item()) < 1e-4
    for i in BN_CONV_INDICES:
        assert torch.count_nonzero(model.features[i].bias) == 0
        assert torch.all(model.features[i + 1].weight == 1)
        assert torch.count_nonzero(model.features[i + 1].bias) == 0


def test_same_generator_seed_gives_the_same_weights():
    a = vgg19_bn(0.125, generator=torch.Generator().manual_seed(3)).state_dict()
    b = vgg19_bn(0.125, generator=torch.Generator().manual_seed(3)).state_dict()
    c = vgg19_bn(0.125, generator=torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def torchvision_style_state_dict(model: VGG) -> dict[str, torch.Tensor]:
    """What torchvision's ImageNet file looks like: no num_batches_tracked, plus a classifier."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    sd["classifier.0.weight"] = torch.randn(7, 5)
    sd["classifier.6.bias"] = torch.randn(3)
    return sd


@pytest.mark.parametrize("batch_norm", [True, False])
def test_load_torchvision_weights_drops_classifier_and_copies_every_feature(batch_norm):
    source = VGG(batch_norm, 0.125, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    target = VGG(batch_norm, 0.125, generator=torch.Generator().manual_seed(2))
    assert load_torchvision_weights(target, torchvision_style_state_dict(source)) is target
    expected = source.state_dict()
    for key, value in target.state_dict().items():
        if "num_batches_tracked" not in key:
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_load_torchvision_weights_names_the_first_mismatching_key_and_changes_nothing():
    source = torchvision_style_state_dict(vgg19_bn(0.125))
    target = vgg19_bn(0.125)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    wrong_shape = dict(source, **{"features.10.weight": torch.zeros(16, 15, 3, 3)})
    with pytest.raises(ValueError, match=r"^features\.10\.weight: expected shape \(16, 16, 3, 3\)"):
        load_torchvision_weights(target, wrong_shape)
    missing = {k: v for k, v in source.items() if k != "features.4.running_var"}
    with pytest.raises(ValueError, match=r"^features\.4\.running_var: missing"):
        load_torchvision_weights(target, missing)
    extra = dict(source, **{"features.53.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"^features\.53\.weight: unexpected"):
        load_torchvision_weights(target, extra)
    with pytest.raises(ValueError, match=r"^features\.2\.weight: missing"):
        load_torchvision_weights(vgg19(0.125), source)  # BN weights into a plain VGG
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
