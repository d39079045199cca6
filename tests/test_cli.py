import subprocess
import sys

import pytest

from histodrl.cli import build_parser, load_config_defaults, main
from histodrl.errors import UserInputError


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


def test_config_file_with_unknown_key_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minutes: 3\nbogus-key: 1\n")
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    with pytest.raises(UserInputError, match="bogus-key"):
        load_config_defaults(demo, str(cfg))


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "histodrl.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("histodrl ")
