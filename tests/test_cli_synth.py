import h5py
import pytest
from PIL import Image

from histodrl.cli import main


def test_synth_glas_exits_0_and_writes_the_files(tmp_path, capsys):
    out = tmp_path / "glas"
    args = ["synth", "glas", str(out), "--n-train", "2", "--n-test-a", "1", "--n-test-b", "0"]
    assert main([*args, "--size", "96x64", "--seed", "3"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "Grade.csv",
        "train_1.bmp",
        "train_1_anno.bmp",
        "train_2.bmp",
        "train_2_anno.bmp",
        "testA_1.bmp",
        "testA_1_anno.bmp",
    }
    with Image.open(out / "train_2.bmp") as im:
        assert im.size == (96, 64)
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("size", ["96", "96x", "40x64", "ax64"])
def test_bad_size_exits_2_with_one_line_naming_it(tmp_path, capsys, size):
    assert main(["synth", "glas", str(tmp_path / "g"), "--n-train", "1", "--size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--size" in err and size in err
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    ("kind", "option"), [("glas", "--n-train=-1"), ("pcam", "--n-valid=0"), ("pcam", "--n-test=-3")]
)
def test_out_of_range_count_exits_2_with_one_line(tmp_path, capsys, kind, option):
    assert main(["synth", kind, str(tmp_path / "d"), option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert option.split("=")[0] in err


def test_glas_with_no_images_at_all_exits_2(tmp_path, capsys):
    args = ["synth", "glas", str(tmp_path), "--n-train", "0", "--n-test-a", "0", "--n-test-b", "0"]
    assert main(args) == 2
    assert "at least one image" in capsys.readouterr().err


def test_existing_dataset_exits_2_naming_the_folder_and_overwrite_replaces_it(tmp_path, capsys):
    args = ["synth", "glas", str(tmp_path), "--n-test-a", "0", "--n-test-b", "0", "--size", "64x64"]
    assert main([*args, "--n-train", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--n-train", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and "--overwrite" in err
    assert main([*args, "--n-train", "1", "--overwrite"]) == 0
    assert not (tmp_path / "train_2.bmp").exists()


def test_synth_pcam_exits_0_and_writes_the_files(tmp_path):
    args = ["synth", "pcam", str(tmp_path), "--n-train", "6", "--n-valid", "2", "--n-test", "2"]
    assert main(args) == 0
    assert len(list(tmp_path.iterdir())) == 9
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_x.h5", "r") as f:
        assert f["x"].shape == (6, 96, 96, 3)


def test_synth_needs_a_kind(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth"])
    assert exc.value.code == 2
    assert "KIND" in capsys.readouterr().err


def test_config_file_gives_option_values_and_the_command_line_wins(tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text("n-train: 1\nn_test_a: 0\nn-test-b: 0\nsize: 64x80\n")
    out = tmp_path / "g"
    assert main(["synth", "glas", str(out), "--config", str(config), "--size", "72x64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Grade.csv", "train_1.bmp", "train_1_anno.bmp"]
    with Image.open(out / "train_1.bmp") as im:
        assert im.size == (72, 64)
