"""The config flow: defaults → TOML → overrides, kebab/snake mapping, unknown keys fail loudly."""

from dataclasses import dataclass, field

import pytest

from fedasr import config
from fedasr.config import ConfigError


@dataclass
class Inner:
    preset: str = "tiny"
    lr: float = 1e-3
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    num_rounds: int = 3
    name: str | None = None
    flag: bool = False
    model: Inner = field(default_factory=Inner)


def test_defaults_and_kebab_keys():
    cfg = config.from_dict(Outer, {"num-rounds": 5, "model": {"preset": "paper", "lr": 1}})
    assert cfg.num_rounds == 5 and cfg.model.preset == "paper" and cfg.model.lr == 1.0
    assert isinstance(cfg.model.lr, float)


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.presett'.*preset"):
        config.from_dict(Outer, {"model": {"presett": "x"}})
    with pytest.raises(ConfigError, match="unknown config key 'rounds'"):
        config.apply_overrides(Outer(), {"rounds": 2})


@pytest.mark.parametrize("key, value", [("num-rounds", "3"), ("num-rounds", 2.5), ("flag", 1), ("model.lr", "fast"),
                                        ("model.layers", 3), ("model", 4)])
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        config.apply_overrides(Outer(), {key: value})


def test_toml_then_overrides(tmp_path):
    p = tmp_path / "exp.toml"
    p.write_text('num-rounds = 7\n[model]\npreset = "small"\nlayers = [3, 4]\n')
    cfg = config.load(Outer, p, {"model.preset": "paper", "name": "run1"})
    assert (cfg.num_rounds, cfg.model.preset, cfg.model.layers, cfg.name) == (7, "paper", [3, 4], "run1")
    assert config.load(Outer) == Outer()


def test_pyproject_style_tool_table(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\nname="x"\n[tool.fedasr]\nnum-rounds = 9\n')
    assert config.load(Outer, p).num_rounds == 9


def test_bad_toml_and_missing_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("num-rounds = = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(Outer, p)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Outer, tmp_path / "nope.toml")


def test_command_line_overrides():
    got = config.parse_overrides(["num-rounds=5", "model.lr = 2e-3", 'name="a b"', "model.preset=/tmp/x",
                                  "model.layers=[3, 4]"])
    assert got == {"num-rounds": 5, "model.lr": 2e-3, "name": "a b", "model.preset": "/tmp/x", "model.layers": [3, 4]}
    assert config.apply_overrides(Outer(), got).model.layers == [3, 4]
    for bad in ("num-rounds", "=3"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            config.parse_overrides([bad])


def test_round_trip_and_flower_run_config():
    cfg = Outer(num_rounds=4, model=Inner(preset="small", layers=[5]))
    d = config.to_dict(cfg)
    assert d["num-rounds"] == 4 and d["model"]["preset"] == "small"
    assert config.from_dict(Outer, d) == cfg
    flat = config.flatten(d)
    assert flat["model.preset"] == "small"
    # Flower run configs are flat; lists travel as JSON strings
    flat["model.layers"] = "[5]"
    flat.pop("name")
    assert config.from_run_config(Outer, flat) == cfg
