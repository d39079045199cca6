import subprocess
import sys

import pytest

from histodrl.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_option_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no-such-option"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--no-such-option" in err


def test_config_file_with_unknown_key_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minutes: 3\nbogus-key: 1\n")
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus-key" in err[0] and str(cfg) in err[0]
    assert not (tmp_path / "d").exists()


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "histodrl.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("histodrl ")
