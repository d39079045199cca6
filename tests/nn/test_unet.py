import pytest
import torch

from histodrl.nn.unet import UNet
from histodrl.nn.vgg import vgg19, vgg19_bn


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 128)])
@pytest.mark.parametrize("out_channels", [1, 2])
def test_unet_output_has_the_input_size_and_out_channels(height, width, out_channels):
    unet = UNet(vgg19_bn(0.125), out_channels=out_channels)
    assert unet(torch.randn(2, 3, height, width)).shape == (2, out_channels, height, width)


def test_unet_on_plain_vgg19_runs():
    assert UNet(vgg19(0.125))(torch.randn(1, 3, 64, 96)).shape == (1, 1, 64, 96)


@pytest.mark.parametrize(("height", "width"), [(100, 64), (64, 48), (31, 31)])
def test_unet_rejects_sizes_not_divisible_by_32_naming_the_size(height, width):
    unet = UNet(vgg19_bn(0.125))
    with pytest.raises(ValueError, match=f"{height}x{width}.*divisible by 32"):
        unet(torch.randn(1, 3, height, width))


def test_unet_encoder_is_the_vgg_and_keys_are_prefixed_with_encoder():
    encoder = vgg19_bn(0.125)
    unet = UNet(encoder)
    assert unet.encoder is encoder
    keys = list(unet.state_dict())
    assert [k for k in keys if k.startswith("encoder.")] == [
        "encoder." + k for k in encoder.state_dict()
    ]
    assert all(k.startswith(("encoder.features.", "decoder.", "head.")) for k in keys)


def test_decoder_widths_scale_with_the_encoder_width_and_skips_are_wired_in_order():
    unet = UNet(vgg19_bn(0.125), out_channels=2)
    assert unet.decoder_widths == (32, 16, 8, 4, 2)
    first_convs = [block.convs[0] for block in unet.decoder]
    # in = previous width (pool5 = 64 at the centre) + skip channels (conv5_4 ... conv1_2)
    assert [c.in_channels for c in first_convs] == [64 + 64, 32 + 64, 16 + 32, 8 + 16, 4 + 8]
    assert [c.out_channels for c in first_convs] == [32, 16, 8, 4, 2]
    assert (unet.head.in_channels, unet.head.out_channels, unet.head.kernel_size) == (2, 2, (1, 1))
    with torch.device("meta"):
        full = UNet(vgg19_bn())
    assert full.decoder_widths == (256, 128, 64, 32, 16)


def test_explicit_decoder_widths_are_used_as_given():
    unet = UNet(vgg19_bn(0.125), decoder_widths=(5, 4, 3, 2, 1))
    assert [b.convs[-3].out_channels for b in unet.decoder] == [5, 4, 3, 2, 1]
    assert unet(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"out_channels": 0}, "out_channels"), ({"decoder_widths": (4, 4)}, "decoder_widths")],
)
def test_invalid_unet_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        UNet(vgg19_bn(0.125), **kwargs)


def test_every_skip_and_the_whole_encoder_receive_gradient():
    unet = UNet(vgg19_bn(0.125))
    unet(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in unet.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_unet_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    unet = UNet(vgg19_bn(0.125)).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = unet(x)
    unet = unet.to(memory_format=torch.channels_last)
    out = unet(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_same_generator_seed_gives_the_same_decoder():
    a = UNet(vgg19_bn(0.125), generator=torch.Generator().manual_seed(1)).state_dict()
    b = UNet(vgg19_bn(0.125), generator=torch.Generator().manual_seed(1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("encoder."))
