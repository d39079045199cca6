"""``histodrl embed`` as a user runs it: the file, the progress bar, the one-line refusals, and
an interrupted run continued with --resume."""

import h5py
import numpy as np
import pytest
from PIL import Image

from histodrl.cli import main
from histodrl.downstream import embed

TINY = ["--width", "0.125", "--crop", "32", "--num-workers", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two class folders of four 64x40 images each (two 32 px tiles per image)."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(4):
            image = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / cls / f"{i}.png")
    return root


def embed_args(folder, out, *extra):
    return ["embed", "--data", f"folder:{folder}", "--out", str(out), *TINY, *extra]


def features(path):
    with h5py.File(path, "r") as f:
        return {k: f["features"][k][:] for k in f["features"]}


def test_embed_writes_one_file_with_a_progress_bar_on_stderr(folder, tmp_path, capsys):
    out = tmp_path / "emb" / "f.h5"
    assert main(embed_args(folder, out, "--blocks", "2,conv5", "--batch-size", "5")) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"histodrl: wrote {out} (folder:{folder} (8 ")
    assert "16 tiles 32x32; features conv2 (16), conv5 (64); random initialisation" in lines[0]
    assert "16/16" in captured.err  # tqdm
    with h5py.File(out, "r") as f:
        assert sorted(f["features"]) == ["conv2", "conv5"]
        assert f["features/conv5"].shape == (16, 64) and f.attrs["blocks"] == "conv2,conv5"
        assert f["name"].asstr()[0] == "a/0.png" and f["label"][-1] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.h5"]

    quiet = tmp_path / "q.h5"
    assert main(embed_args(folder, quiet, "--no-progress", "--blocks", "conv2,conv5")) == 0
    assert capsys.readouterr().err == ""
    for block, values in features(out).items():  # the batch size changes nothing
        np.testing.assert_allclose(features(quiet)[block], values, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--data", "folder:/nope"], "histodrl: error: folder:/nope: /nope does not exist"),
        (["--data", "slides:/x"], "histodrl: error: slides:/x: unknown data kind 'slides'"),
        (["--blocks", "conv4,conv6"], "histodrl: error: --blocks 'conv6': unknown block"),
        (["--blocks", ","], "histodrl: error: --blocks"),
        (["--mpp", "0.5", "--level", "1"], "histodrl: error: --mpp, --level: give one"),
        (["--crop", "8"], "histodrl: error: --crop 8: expected a value >= 32"),
        (["--resume"], "partial not found (nothing to continue; run without --resume)"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(folder, tmp_path, capsys, extra, expected):
    out = tmp_path / "x.h5"
    assert main([*embed_args(folder, out, "--no-progress"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err, err
    assert not out.exists() and not embed.partial_path(out).exists()


def test_an_existing_file_is_kept_unless_overwrite(folder, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert main(embed_args(folder, out, "--no-progress")) == 0
    before = out.stat().st_mtime_ns
    assert main(embed_args(folder, out, "--no-progress")) == 2
    assert capsys.readouterr().err.strip() == (
        f"histodrl: error: {out}: exists (--overwrite replaces it)"
    )
    assert out.stat().st_mtime_ns == before
    assert main(embed_args(folder, out, "--no-progress", "--overwrite", "--blocks", "1")) == 0
    assert list(features(out)) == ["conv1"]


def test_an_interrupted_run_is_resumed_to_the_same_features(folder, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole.h5"
    assert main(embed_args(folder, whole, "--no-progress", "--batch-size", "4")) == 0
    out = tmp_path / "cut.h5"
    calls = []
    real = embed._checkpoint

    def interrupted(h5, done):  # Ctrl-C (or SIGTERM) after the first flush
        calls.append(done)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(h5, done)

    monkeypatch.setattr(embed, "FLUSH_EVERY", 1)
    monkeypatch.setattr(embed, "_checkpoint", interrupted)
    capsys.readouterr()
    assert main(embed_args(folder, out, "--no-progress", "--batch-size", "4")) == 130
    err = capsys.readouterr().err
    partial = embed.partial_path(out)
    assert f"embed stopped after 8 of 16 tiles; {partial} keeps them (--resume continues)" in err
    assert "histodrl: interrupted" in err and not out.exists()

    monkeypatch.setattr(embed, "_checkpoint", real)
    assert main(embed_args(folder, out, "--no-progress", "--crop", "64", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"histodrl: error: --resume: {partial} was started with other settings: --crop 32 "
        "(now 64) (use the same settings, or --overwrite to start again)"
    )
    assert main(embed_args(folder, out, "--no-progress", "--batch-size", "4")) == 2
    assert "an unfinished embedding is there" in capsys.readouterr().err
    assert main(embed_args(folder, out, "--no-progress", "--batch-size", "4", "--resume")) == 0
    assert not partial.exists()
    for block, values in features(whole).items():
        np.testing.assert_array_equal(features(out)[block], values)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--init",
        "--blocks",
        "--crop",
        "--resume",
        "--overwrite",
        "--max-tiles-per-slide",
    ):
        assert flag in text
