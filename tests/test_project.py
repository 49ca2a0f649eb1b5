"""Project wiring: the two README commands exist, CI calls the test command, pins agree everywhere."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = deps["dependencies"] + deps["optional-dependencies"]["dev"]
    return {re.split(r"[\[=]", p)[0].lower(): p for p in pins}


def test_every_dependency_is_pinned_exactly():
    for name, spec in _pyproject_pins().items():
        assert "==" in spec, f"{name} is not pinned exactly: {spec}"


def test_environment_yml_has_the_same_pins():
    env = (ROOT / "environment.yml").read_text()
    env_pins = {re.split(r"[\[=]", p.strip())[0].lower(): p.strip()
                for p in re.findall(r"^\s+- ([A-Za-z][\w\-\[\]]*==[\w.]+)\s*$", env, re.M)}
    assert env_pins == _pyproject_pins()


def test_readme_commands_exist_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for cmd in ("reproduce", "test"):
        assert f"make {cmd}" in readme
        assert re.search(rf"^{cmd}:", makefile, re.M), f"Makefile has no '{cmd}' target"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
