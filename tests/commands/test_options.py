"""The options model: types, checks, argparse and YAML generated from one declaration."""

import argparse
import subprocess
import sys

import pytest
import yaml

from histodrl.commands import options as om
from histodrl.commands.classify import ClassifyOptions, ProbeOptions
from histodrl.commands.pretrain import PretrainOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.errors import UserInputError


@om.options_class
class Toy:
    name: str = om.option(help="a required text")
    count: int = om.option(3, help="a count", check=om.at_least(1))
    rate: float = om.option(0.5, help="a rate", check=om.fraction())
    flag: bool = om.option(False, help="a flag")
    mode: str = om.option("a", help="a choice", choices=("a", "b"))
    cap: int | None = om.option(None, help="an optional cap", check=om.at_least(1))
    pair: tuple[float, float] = om.option((0.1, 0.2), help="a pair", check=om.fraction_pair())
    speed: float = om.option(1.0, flag="--lambda", help="renamed flag", runtime=True)


def _parse(argv):
    parser = argparse.ArgumentParser()
    om.add_arguments(parser, Toy)
    return om.typed_from_namespace(Toy, parser.parse_args(argv))


def test_construction_converts_and_checks_every_value():
    toy = Toy(name="x", count=2, rate=1, pair=[0.2, 0.3])
    assert (toy.rate, toy.pair) == (1.0, (0.2, 0.3))
    assert isinstance(toy.rate, float)
    with pytest.raises(UserInputError, match=r"^--count 0: expected a value >= 1$"):
        Toy(name="x", count=0)
    with pytest.raises(UserInputError, match=r"^--mode c: expected one of a, b$"):
        Toy(name="x", mode="c")
    with pytest.raises(UserInputError, match="--rate"):
        Toy(name="x", rate=float("nan"))
    with pytest.raises(UserInputError, match="--count"):
        Toy(name="x", count=True)  # a bool is not an integer


def test_the_command_line_holds_only_what_was_typed():
    typed = _parse(["--name", "n", "--count", "4", "--flag", "--lambda", "2"])
    assert dict(typed.values) == {"name": "n", "count": 4, "flag": True, "speed": 2.0}
    toy = om.from_sources(Toy, typed)
    assert (toy.count, toy.flag, toy.speed, toy.rate) == (4, True, 2.0, 0.5)
    assert om.from_sources(Toy, _parse(["--name", "n", "--cap", "none"])).cap is None


def test_a_typed_value_of_the_wrong_type_or_range_is_one_line():
    with pytest.raises(UserInputError, match=r"^--count '2.5': expected an integer$"):
        _parse(["--name", "n", "--count", "2.5"])
    with pytest.raises(UserInputError, match=r"^--count -3: expected a value >= 1$"):
        _parse(["--name", "n", "--count", "-3"])


def test_required_option_missing_is_named():
    with pytest.raises(UserInputError, match=r"^--name: required$"):
        om.from_sources(Toy, _parse([]))


def test_yaml_values_come_before_typed_ones_and_are_named_by_file_and_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: from-file\ncount: 5\nrate: 1e-1\nlambda: 3\n")
    toy = om.from_sources(Toy, _parse(["--config", str(cfg), "--count", "6"]))
    assert (toy.name, toy.count, toy.rate, toy.speed) == ("from-file", 6, 0.1, 3.0)
    cfg.write_text("name: x\ncount: 2.7\n")
    with pytest.raises(UserInputError, match=r"c\.yaml: count: 2\.7: expected an integer"):
        om.from_sources(Toy, _parse(["--config", str(cfg)]))
    cfg.write_text("name: x\nflag: 'no'\n")
    with pytest.raises(UserInputError, match=r"c\.yaml: flag: 'no': expected true or false"):
        om.from_sources(Toy, _parse(["--config", str(cfg)]))
    cfg.write_text("name: x\npair: 0.5\n")
    with pytest.raises(UserInputError, match=r"c\.yaml: pair: 0\.5: expected 2"):
        om.from_sources(Toy, _parse(["--config", str(cfg)]))
    cfg.write_text("name: x\nbogus: 1\n")
    with pytest.raises(UserInputError, match=r"c\.yaml: unknown option 'bogus'"):
        om.from_sources(Toy, _parse(["--config", str(cfg)]))
    cfg.write_text("- a list\n")
    with pytest.raises(UserInputError, match="expected a mapping"):
        om.from_sources(Toy, _parse(["--config", str(cfg)]))
    with pytest.raises(UserInputError, match="config file not found"):
        om.from_sources(Toy, _parse(["--config", str(tmp_path / "missing.yaml")]))


def test_derived_and_legacy_keys_of_a_run_config_are_skipped(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("name: x\ntotal_steps: 9\ndata_description: d\nexplicit: [count]\n")
    assert om.from_config(Toy, cfg).name == "x"


@pytest.mark.parametrize("cls", [PretrainOptions, SegmentOptions, ClassifyOptions, ProbeOptions])
def test_every_command_writes_a_config_that_reads_back_equal(cls, tmp_path):
    options = cls(data="glas:/somewhere", out=str(tmp_path / "run"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(om.to_config(options, {"total_steps": 3})))
    assert om.from_config(cls, path) == options


def test_pretrain_fills_data_dependent_defaults():
    pcam = PretrainOptions(data="pcam:/x", out="r").resolved()
    assert (pcam.crop, pcam.epochs) == (96, 20.0)
    glas = PretrainOptions(data="glas:/x", out="r").resolved()
    assert (glas.crop, glas.epochs) == (256, 200.0)
    # --max-steps alone sets the length: epochs stay unset, so a reused config does the same.
    assert PretrainOptions(data="glas:/x", out="r", max_steps=5).resolved().epochs is None
    with pytest.raises(UserInputError, match="--batch-size 1"):
        PretrainOptions(data="glas:/x", out="r", method="drl", batch_size=1)


def test_segment_crop_must_be_a_multiple_of_32():
    with pytest.raises(UserInputError, match=r"^--crop 100: expected a multiple of 32"):
        SegmentOptions(data="glas:/x", out="r", crop=100)


def test_the_options_layer_imports_no_torch():
    code = (
        "import sys; import histodrl.cli, histodrl.commands.pretrain, histodrl.commands.segment,"
        " histodrl.commands.classify, histodrl.commands.tools; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
