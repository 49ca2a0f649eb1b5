"""One configuration flow: typed dataclass defaults → TOML file → overrides (papermill / CLI / Flower).

Every knob lives in a ``@dataclass`` next to the code it controls (``FeatureConfig`` in
``features.py``, ``ModelConfig`` in ``model.py``, ...). This module only *composes* and *loads* them:

* TOML and Flower ``run_config`` keys are kebab-case (``num-server-rounds``); fields are snake_case.
* Nested tables map to nested dataclasses (``[model]`` → ``cfg.model``); dotted override keys
  (``"model.preset"``) address one field.
* An unknown key is an error that names the key and the keys that would have been accepted
  (nanoGPT's configurator does the same: a typo must never silently fall back to a default). A
  dataclass may list retired keys in a ``__renamed__`` class attribute (old kebab key → new dotted
  key): such a key fails with a message naming its new key.
* Values are type-checked against the field annotation (an ``int`` is accepted for a ``float``; a
  ``Literal`` lists its accepted values).
* A nested table's omitted keys take the *enclosing* dataclass's default for that table (e.g.
  ``[fed.omc]`` without ``bits`` keeps ``FedConfig``'s ``bits = 0``), not the nested class's own default.
* `load` names the file in every error.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["ConfigError", "from_dict", "load", "apply_overrides", "parse_overrides", "to_dict", "flatten",
           "merge", "from_run_config"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


def _snake(key: str) -> str:
    return key.replace("-", "_")


def _kebab(key: str) -> str:
    return key.replace("_", "-")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless, else raise `ConfigError`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not an accepted value; accepted values: {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping with kebab- or snake-case keys.

    Raises:
        ConfigError: unknown key (with close matches), or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    renamed = getattr(cls, "__renamed__", {})
    kwargs = {}
    for key, value in data.items():
        name = _snake(key)
        where = f"{prefix}.{_kebab(name)}" if prefix else _kebab(name)
        if name not in fields:
            if _kebab(name) in renamed:
                new = f"{prefix}.{renamed[_kebab(name)]}" if prefix else renamed[_kebab(name)]
                raise ConfigError(f"config key {where!r} was renamed: use {new!r} instead")
            known = sorted(_kebab(f) for f in fields)
            close = difflib.get_close_matches(_kebab(name), known, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ConfigError(f"unknown config key {where!r}.{hint} Known keys here: {known}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            default = _field_default(fields[name])
            if dataclasses.is_dataclass(default):  # omitted keys keep the enclosing class's default table
                value = merge(to_dict(default), value)
        kwargs[name] = _check_type(value, tp, where)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise  # already names its key (a nested table validated in __post_init__)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (calling its factory), or None if it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def merge(base: Mapping, over: Mapping) -> dict:
    """``over`` merged into ``base`` table by table (``over`` wins)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict:
    """Return a JSON-ready nested dict with kebab-case keys (the inverse of `from_dict`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[_kebab(f.name)] = v
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict into dotted keys (``{"model": {"preset": "tiny"}} → {"model.preset": "tiny"}``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} addresses inside a non-table value")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: T, overrides: Mapping[str, Any] | None) -> T:
    """Return a copy of ``cfg`` with dotted-key ``overrides`` applied (validated like a file)."""
    if not overrides:
        return cfg
    merged = merge(to_dict(cfg), _unflatten({k: v for k, v in overrides.items()}))
    return from_dict(type(cfg), merged)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` overrides -> ``{dotted key: value}``. A value is read as TOML
    (``train.max-steps=2900``, ``fed.ratio=0.5``, ``corpus="data/x"``) and, when it is not valid TOML, kept
    as a bare string (``corpus=/tmp/data``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.max-steps=2900")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Load ``cls`` defaults, then the TOML file at ``path`` (if any), then dotted ``overrides``.

    The TOML file may hold a ``[tool.fedasr]`` table (a ``pyproject.toml``) or the tables directly.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
        data = data.get("tool", {}).get("fedasr", data) if "tool" in data else data
    try:
        cfg = from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"override {sorted(overrides or {})} (over {path or 'the defaults'}): {e}") from None


def from_run_config(cls: type[T], run_config: Mapping[str, Any]) -> T:
    """Build ``cls`` from a Flower ``context.run_config`` (flat, dotted, kebab-case keys).

    This is the only place Flower's run config is parsed. Values that Flower cannot carry natively
    (lists, tables) may be given as JSON strings; they are decoded here.
    """
    flat = {}
    for k, v in run_config.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        flat[k] = v
    return from_dict(cls, _unflatten(flat))
