"""Configs for an imported corpus: a synthetic profile's seed, federated and quality configs, pointed at it.

``python -m fedasr.importers configs --corpus data/librispeech [--profile librispeech] [--like quick]`` copies
``configs/{seed,federated,quality}/<like>.toml`` to ``<out>/{seed,federated,quality}/<profile>.toml`` line by line,
so the recipe and its comments stay as they are; only what names the corpus, the results folders, or does not fit
the corpus changes, each on its own line with a comment saying why:

* the corpus path, ``profile``, the experiment names (``federated-<profile>``, ``quality-<profile>``) and the seed
  model (``<results-root>/seed-<profile>/model``, where ``make seed PROFILE=<profile>`` trains it);
* evaluation splits the corpus does not have or left empty (an import has no ``real`` split, the Asterisk check of
  the synthetic corpus; a small import may have no ``user_dev``);
* ``fed.min-successful-clients`` above the corpus' number of seen (training) clients (every round would be skipped);
* ``task.eval-max-utterances`` where a config evaluates whole splits and one holds more than `EVAL_CAP` utterances;
* the quality ablation's ``tuned_on``: no choice of the ``--like`` profile was made on this corpus' splits.

Every written file is read back: it must parse to the expected settings and load with `fedasr.config.load`
against its dataclass (unknown keys fail), else nothing is left half-written.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from fedasr import config as config_lib
from fedasr.importers.common import SourceError

__all__ = ["KINDS", "config_texts", "split_sizes", "write_configs"]

KINDS = ("seed", "federated", "quality")  # configs/<kind>/<profile>.toml, one per pipeline step
_SEED_EVAL_DEFAULT = ["proxy_test", "user_test", "real"]  # fedasr.train.SeedConfig.eval_splits
# Evaluations of the synthetic profiles' recipes see at most 444 utterances per split (data/quick's user_test); an
# imported split can be far larger (LibriSpeech recipe: user_heldout ~15,000 utterances, ~50 h), evaluated every few
# rounds. A config that evaluates whole splits gets this cap (the first N of each split, in manifest order).
EVAL_CAP = 500
_HEADER = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def split_sizes(corpus: str | Path) -> dict[str, int]:
    """Utterances per split of the corpus folder (non-empty manifest lines); a split without a manifest is absent."""
    root = Path(corpus)
    if not (root / "corpus.json").exists():
        raise SourceError(f"{root} is not a corpus (no corpus.json): import one first (python -m fedasr.importers)")
    return {p.stem: sum(1 for line in p.read_text().splitlines() if line.strip())
            for p in sorted((root / "manifests").glob("*.jsonl"))}


def _seen_clients(corpus: Path) -> int:
    path = corpus / "manifests" / "user_train.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return len({json.loads(line).get("client") for line in lines if line.strip()} - {None})


def _toml(value: Any) -> str:
    """``value`` (str, bool, int, float or a list of them) as a TOML value."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _set(lines: list[str], table: tuple[str, ...], key: str, value: Any, why: str) -> None:
    """Set ``key = value  # why`` in ``table`` of the TOML ``lines`` (in place): the key's line is replaced, a missing
    key is added after the table's last setting, a missing table is appended."""
    current, span = (), {(): [0, None]}  # table -> [first line, last setting line]
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m:
            current = tuple(m.group(1).split("."))
            span.setdefault(current, [i + 1, None])
        elif current == table and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {_toml(value)}  # {why}"
            return
        elif line.strip() and not line.lstrip().startswith("#"):
            span.setdefault(current, [i, None])[1] = i
    new = f"{key} = {_toml(value)}  # {why}"
    if table not in span:
        lines += ["", f"[{'.'.join(table)}]", new]
        return
    first, last = span[table]
    if last is None and table == ():  # no top-level setting: after the leading comment block
        last = next((i for i, line in enumerate(lines) if _HEADER.match(line)), len(lines)) - 1
        while last >= 0 and not lines[last].strip():
            last -= 1
    lines.insert(first if last is None else last + 1, new)


def _changes(kind: str, data: dict, corpus: str, profile: str, like: str, results_root: str,
             sizes: dict[str, int], seen: int) -> list[tuple[tuple[str, ...], str, Any, str]]:
    """The ``(table, key, value, why)`` edits that point the ``like`` profile's ``kind`` config ``data`` at the corpus."""
    out = []

    def splits(table: tuple[str, ...], current: list[str], was_default: bool) -> None:
        keep = [s for s in current if sizes.get(s)]
        if keep != current:
            gone = ", ".join(s for s in current if s not in keep)
            src = "the default" if was_default else "the --like profile's"
            out.append((table, "eval-splits", keep, f"(imported corpus) {src} without {gone}: {corpus} has none"))

    if kind == "seed":
        out += [((), "profile", profile, f"(imported corpus) was {data.get('profile', like)!r}"),
                ((), "corpus", corpus, "(imported corpus) the folder written by python -m fedasr.importers")]
        splits((), data.get("eval-splits", _SEED_EVAL_DEFAULT), "eval-splits" not in data)
        return out
    exp = str(data.get("experiment", kind))
    name = exp.removesuffix(f"-{like}") + f"-{profile}"
    task = data.get("task", {})
    seed_dir = f"{results_root}/seed-{profile}"
    trained_by = f"make seed PROFILE={profile}" if results_root == "results" else \
        f"python -m fedasr.train --config <configs>/seed/{profile}.toml --out {seed_dir}"
    out += [((), "experiment", name, f"(imported corpus) results under {results_root}/{name}/, was {exp!r}"),
            (("task",), "corpus", corpus, "(imported corpus) the folder written by python -m fedasr.importers"),
            (("task",), "seed-model", f"{seed_dir}/model", f"(imported corpus) the seed trained on it: {trained_by}")]
    if results_root != "results":
        out.append(((), "results-root", results_root, "(imported corpus) results folder"))
    evaluated = task.get("eval-splits", ["user_test", "proxy_test"])
    splits(("task",), evaluated, "eval-splits" not in task)
    big = {s: sizes[s] for s in evaluated if sizes.get(s, 0) > EVAL_CAP}
    if not task.get("eval-max-utterances") and big:
        largest = max(big, key=big.get)
        why = (f"(imported corpus) was all: {largest} has {big[largest]:,} utterances; the first {EVAL_CAP} of each "
               f"split, as the {like} profile's evaluations are sized")
        out.append((("task",), "eval-max-utterances", EVAL_CAP, why))
    m = data.get("fed", {}).get("min-successful-clients")
    if m is not None and seen and m > seen:
        out.append((("fed",), "min-successful-clients", seen,
                    f"(imported corpus) was {m}: {corpus} has {seen} seen (training) clients"))
    if kind == "quality" and data.get("tuned_on"):
        why = f"(imported corpus) the {like} profile's choices were made on the synthetic corpus, on none of this one's"
        out.append(((), "tuned_on", [], why))
    return out


def _apply(data: dict, table: tuple[str, ...], key: str, value: Any) -> None:
    for t in table:
        data = data.setdefault(t, {})
    data[key] = value


def config_texts(corpus: str | Path, profile: str | None = None, like: str = "quick", source: str | Path = "configs",
                 results_root: str = "results") -> dict[str, str]:
    """The three configs' texts ``{kind: toml}`` for ``corpus`` (see the module docstring), checked.

    Args:
        corpus: the imported corpus folder, written into the configs as given (relative: to the repository root).
        profile: the name of the configs and results folders (Default: the corpus folder's name).
        like: the synthetic profile whose configs are copied (one with all of seed, federated and quality configs).
        source: the folder holding ``<kind>/<like>.toml``.
        results_root: the results folder the configs name (seed model, experiment folders).
    """
    source, corpus = Path(source), str(corpus)
    profile = profile or Path(corpus).name
    have = sorted(set.intersection(*({p.stem for p in (source / k).glob("*.toml")} for k in KINDS)))
    if like not in have:
        missing = ", ".join(f"{k}/{like}.toml" for k in KINDS if not (source / k / f"{like}.toml").exists())
        raise SourceError(f"--like {like!r}: {source} has no {missing}; profiles with seed, federated and quality "
                          f"configs: {', '.join(have) or 'none'}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", profile):
        raise SourceError(f"--profile {profile!r}: use letters, digits, '_', '.', '-' (it names files and folders)")
    sizes, seen = split_sizes(corpus), _seen_clients(Path(corpus))
    if not sizes.get("proxy_train") or not seen:
        raise SourceError(f"{corpus}: need proxy_train utterances and user_train clients, got {sizes}")
    texts = {}
    for kind in KINDS:
        path = source / kind / f"{like}.toml"
        text = path.read_text()
        data = tomllib.loads(text)
        command = f"python -m fedasr.importers configs --corpus {corpus} --profile {profile} --like {like}"
        lines = [f"# Generated by `{command}` from {path}:",
                 f"# the {like} profile's recipe and budgets, chosen (and commented below) on the synthetic corpus;",
                 "# the lines marked (imported corpus) were changed to fit this corpus.", "", *text.splitlines()]
        for table, key, value, why in _changes(kind, data, corpus, profile, like, results_root, sizes, seen):
            _set(lines, table, key, value, why)
            _apply(data, table, key, value)
        texts[kind] = "\n".join(lines) + "\n"
        if tomllib.loads(texts[kind]) != data:  # the line edits did what the settings say
            raise RuntimeError(f"{path}: could not rewrite it for {corpus} (a setting spans lines or an inline table)")
    return texts


def _classes() -> dict[str, type]:
    from fedasr import experiments, train  # imported here: importing a corpus does not need torch or Flower

    return {"seed": train.SeedConfig, "federated": experiments.FederatedExperiment,
            "quality": experiments.QualityExperiment}


def write_configs(corpus: str | Path, profile: str | None = None, like: str = "quick", out: str | Path = "configs",
                  source: str | Path = "configs", results_root: str = "results",
                  overwrite: bool = False) -> dict[str, Path]:
    """Write ``<out>/{seed,federated,quality}/<profile>.toml`` for ``corpus`` (`config_texts`); return the paths.

    Each file is loaded with `fedasr.config.load` against its dataclass before any is written. An existing file is
    replaced only with ``overwrite``; the synthetic profiles' own configs (tiny, quick, full) never are.
    """
    from fedasr.corpus_profiles import PROFILES

    profile = profile or Path(corpus).name
    if profile in PROFILES:
        raise SourceError(f"--profile {profile!r} is a synthetic corpus profile ({', '.join(PROFILES)}): choose "
                          "another name (e.g. the corpus folder's)")
    texts = config_texts(corpus, profile, like, source, results_root)
    paths = {kind: Path(out) / kind / f"{profile}.toml" for kind in KINDS}
    if not overwrite and any(p.exists() for p in paths.values()):
        raise SourceError(f"{', '.join(str(p) for p in paths.values() if p.exists())} exist: pass --overwrite")
    for kind, cls in _classes().items():  # all three load before any is written
        check = Path(out) / kind / f".{profile}.toml.check"
        check.parent.mkdir(parents=True, exist_ok=True)
        check.write_text(texts[kind])
        try:
            config_lib.load(cls, check)
        except (config_lib.ConfigError, ValueError) as e:
            raise SourceError(f"{paths[kind]} would not load: {e}") from None
        finally:
            check.unlink()
    for kind, path in paths.items():
        path.write_text(texts[kind])
    return paths
