import pytest
import torch
from safetensors import safe_open
from torch import nn

from histodrl.errors import UserInputError
from histodrl.nn.encoder_weights import encoder_state_dict, load_encoder, save_encoder
from histodrl.nn.vgg import VGG, vgg19, vgg19_bn


def trained_like(model: VGG, seed: int = 0) -> VGG:
    """Give every parameter and BN buffer a non-default value, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            else:
                value.fill_(17)
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_encoder_state_dict_is_contiguous_cpu_copies_with_features_keys():
    model = trained_like(vgg19_bn(0.125)).to(memory_format=torch.channels_last)
    assert not model.features[0].weight.is_contiguous()
    sd = encoder_state_dict(model)
    assert list(sd) == list(model.state_dict())
    assert all(k.startswith("features.") for k in sd)
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in sd.values())
    before = sd["features.0.weight"].clone()
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
    assert torch.equal(sd["features.0.weight"], before)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_safetensors_roundtrip_restores_every_tensor(tmp_path, batch_norm):
    model = trained_like(VGG(batch_norm, 0.125))
    path = save_encoder(model, tmp_path / "run" / "encoder.safetensors")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["encoder.safetensors"]  # no temp left
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == ("vgg19_bn" if batch_norm else "vgg19")
    assert meta["width"] == "0.125"
    loaded = load_encoder(path, width=0.125, batch_norm=batch_norm)
    assert_same_state(loaded, model)


def test_load_encoder_accepts_an_in_memory_state_dict():
    model = trained_like(vgg19_bn(0.125))
    assert_same_state(load_encoder(encoder_state_dict(model), width=0.125), model)


def test_torchvision_style_pth_file_with_classifier_and_no_bn_counters_loads(tmp_path):
    model = trained_like(vgg19_bn(0.125))
    sd = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    sd["classifier.0.weight"] = torch.randn(6, 4)
    torch.save(sd, tmp_path / "vgg19_bn-imagenet.pth")
    loaded = load_encoder(tmp_path / "vgg19_bn-imagenet.pth", width=0.125)
    for key, value in sd.items():
        if not key.startswith("classifier."):
            assert torch.equal(loaded.state_dict()[key], value), key


class TorchvisionLayoutVGG(nn.Module):
    """torchvision.models.VGG's module tree (features, avgpool, classifier), with a tiny classifier."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(4, 3), nn.ReLU(True), nn.Dropout(), nn.Linear(3, 2)
        )


def test_exported_weights_load_into_torchvision_layout_with_only_classifier_missing():
    exported = encoder_state_dict(trained_like(vgg19_bn(0.125)))
    target = TorchvisionLayoutVGG(vgg19_bn(0.125).features)
    result = target.load_state_dict(exported, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(
        ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]
    )
    assert torch.equal(target.features[49].weight, exported["features.49.weight"])


def test_wrong_width_file_raises_user_input_error_naming_file_and_right_width(tmp_path):
    path = save_encoder(vgg19_bn(0.125), tmp_path / "small.safetensors")
    with pytest.raises(UserInputError) as exc:
        load_encoder(path, width=0.25)
    message = str(exc.value)
    assert message.startswith(f"{path}: features.0.weight: expected shape (16, 3, 3, 3)")
    assert "width=0.125" in message
    assert "\n" not in message


def test_batch_norm_mismatch_suggests_the_right_flag(tmp_path):
    path = save_encoder(vgg19(0.125), tmp_path / "plain.safetensors")
    with pytest.raises(UserInputError, match=r"plain\.safetensors: .*pass batch_norm=False"):
        load_encoder(path, width=0.125, batch_norm=True)


def test_missing_key_raises_user_input_error_naming_file_and_key(tmp_path):
    from safetensors.torch import save_file

    sd = encoder_state_dict(vgg19_bn(0.125))
    del sd["features.27.bias"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(UserInputError, match=r"cut\.safetensors: features\.27\.bias: missing"):
        load_encoder(tmp_path / "cut.safetensors", width=0.125)


def test_state_dict_with_wrong_key_is_reported_as_state_dict():
    sd = encoder_state_dict(vgg19_bn(0.125))
    sd["encoder.extra"] = torch.zeros(1)
    with pytest.raises(UserInputError, match=r"^state dict: encoder\.extra: unexpected"):
        load_encoder(sd, width=0.125)


def test_missing_or_corrupt_files_raise_user_input_error_naming_them(tmp_path):
    with pytest.raises(UserInputError, match=r"nothing\.safetensors: .*not found"):
        load_encoder(tmp_path / "nothing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserInputError, match=r"junk\.safetensors: not a readable safetensors"):
        load_encoder(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match=r"junk\.pth: not a readable PyTorch"):
        load_encoder(tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserInputError, match=r"list\.pt: expected a state dict"):
        load_encoder(tmp_path / "list.pt")
