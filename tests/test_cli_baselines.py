"""``histodrl pretrain --method NAME`` for the baselines, end to end on generated GLaS data."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from histodrl.cli import main
from histodrl.nn import vgg19_bn


@pytest.fixture(scope="module")
def glas_folder(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    # 3 train images of 112x64: 4 crops of 64 at stride 16 each, 12 pretraining items.
    make_glas(root, n_train=3, n_test_a=1, n_test_b=1, size=(112, 64), seed=0)
    return root


def _pretrain(data, run, method, *extra):
    return [
        *("pretrain", "--method", method, "--data", f"glas:{data}", "--out", str(run)),
        *("--width", "0.125", "--crop", "64", "--batch-size", "4", "--num-workers", "0"),
        *("--max-steps", "2", "--log-every", "1", "--no-progress", *extra),
    ]


def test_rotation_pretrains_and_exports_a_trunk_that_loads_into_vgg19_bn(glas_folder, tmp_path):
    run = tmp_path / "run"
    assert main(_pretrain(glas_folder, run, "rotation")) == 0
    path = run / "encoder.safetensors"
    trunk = vgg19_bn(width=0.125)
    trunk.load_state_dict(load_file(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "rotation" and meta["trained_tap"] == "pool5" and meta["steps"] == "2"
    card = (run / "MODEL_CARD.md").read_text()
    assert "RotNet" in card and "Deformation" not in card
    # The export is the trained trunk, not the initialisation.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    first = ckpt["state_dict"]["encoder.features.0.weight"]
    assert torch.equal(trunk.features[0].weight, first)


def test_exemplar_trains_on_its_seed_items_through_the_real_loader(glas_folder, tmp_path):
    run = tmp_path / "run"
    assert main(_pretrain(glas_folder, run, "exemplar", "--exemplar-classes", "8")) == 0
    assert (run / "encoder.safetensors").is_file()


def test_exemplar_with_more_classes_than_items_is_one_line_and_exit_2(
    glas_folder, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(_pretrain(glas_folder, run, "exemplar", "--exemplar-classes", "500")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--exemplar-classes 500" in err[0] and "12 items" in err[0]
