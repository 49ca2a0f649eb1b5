"""Run directories and self-describing JSON results (``results/<experiment>/<run-id>/``).

Layout of one run (DESIGN.md §4)::

    config.json     resolved config, command line, git commit, package versions, host
    rounds.jsonl    one JSON object per round/step (appended as the run goes)
    summary.json    final metrics, written once at the end

JSON is written atomically (`atomic_write`: temp file + rename; other modules use it for their own
whole-file writes too) so an interrupted run never leaves a half file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from fedasr.config import to_dict

__all__ = [
    "REPO_ROOT",
    "RunDir",
    "new_run",
    "open_run",
    "atomic_write",
    "write_json",
    "write_jsonl",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "environment_info",
    "git_commit",
    "relative_to_repo",
    "compare_trees",
]

# The repository root: notebooks chdir here so every path in configs is relative to one place.
REPO_ROOT = Path(__file__).resolve().parent.parent

TRACKED_PACKAGES = (
    "torch", "torchaudio", "flwr", "ray", "numpy", "scipy", "soundfile", "sentencepiece", "jiwer",
    "faker", "inflect", "pyroomacoustics", "papermill",
)


_ROOT_PREFIX = str(REPO_ROOT) + os.sep


def relative_to_repo(text: str) -> str:
    """``text`` with every absolute path inside the repository written relative to it (results must not
    depend on where the checkout lives: two machines' runs of one config give the same JSON)."""
    return text.replace(_ROOT_PREFIX, "") if _ROOT_PREFIX in text else text


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(to_dict(obj))
    if isinstance(obj, (str, Path)):
        return relative_to_repo(str(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/Inf; None marks "not a number" explicitly
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; move it onto ``path`` when the block succeeds.

    Parent folders are created. The temporary file is ``<name>.tmp`` in the same folder, so the final
    ``os.replace`` is a rename on one file system: a reader sees the old file or the new one, never a
    half-written one. If the block (or the rename) raises, the temporary file is removed.

    Example::

        with atomic_write(directory / "model.pt") as tmp:
            torch.save(payload, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
    return path


def write_jsonl(path: str | Path, rows: Iterable[Any], ensure_ascii: bool = True) -> Path:
    """Write ``rows`` as JSON lines (one key-sorted object a line), atomically; ``ensure_ascii`` as in `json.dumps`."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), sort_keys=True, ensure_ascii=ensure_ascii) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row (a line) to a JSON-lines file and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` if the tree has changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(packages: Iterable[str] = TRACKED_PACKAGES) -> dict:
    """Python, platform, CPU count and versions of the packages that shape results."""
    versions = {}
    for p in packages:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": _cpu(),
        "packages": versions,
    }


def _cpu() -> dict:
    """The CPU model and the vector ISA torch's kernels dispatch on: float results (and so WER, after many
    rounds) can differ in the last digits between machines whose kernels differ, never between runs on one."""
    model = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor() or None)
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 — torch is optional here
        capability = None
    return {"model": model, "torch_capability": capability}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


@dataclasses.dataclass
class RunDir:
    """A run's folder with helpers for its three standard files."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def rounds_path(self) -> Path:
        return self.path / "rounds.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def log_round(self, row: dict) -> None:
        append_jsonl(self.rounds_path, row)

    def rounds(self) -> list[dict]:
        return read_jsonl(self.rounds_path)

    def write_summary(self, summary: dict) -> Path:
        return write_json(self.summary_path, summary)

    def summary(self) -> dict:
        return read_json(self.summary_path)

    def hypotheses_path(self, server_round: int) -> Path:
        """The hypotheses of the evaluation after ``server_round`` (one ``{"split", "id", "hyp"}`` a line)."""
        return self.path / "hypotheses" / f"round{server_round:03d}.jsonl"


def new_run(experiment: str, config: Any, results_root: str | Path = "results", run_id: str | None = None,
            resume: bool = False) -> RunDir:
    """Create ``results_root/experiment/run_id`` (run_id defaults to a UTC timestamp); see `open_run`."""
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return open_run(Path(results_root) / experiment / run_id, experiment, config, resume=resume)


def _command() -> list[str]:
    """The command that started this process; a Jupyter kernel (papermill, JupyterLab) is named as such, without
    its per-session connection file."""
    if sys.argv and Path(sys.argv[0]).name == "ipykernel_launcher.py":
        return ["ipykernel (a notebook)"]
    return list(sys.argv)


def open_run(path: str | Path, experiment: str, config: Any, resume: bool = False) -> RunDir:
    """Create the run folder ``path`` and write its ``config.json``.

    Args:
        path: the folder, e.g. ``results/seed``.
        experiment: experiment name recorded in config.json, e.g. ``"seed"`` or ``"federated"``.
        config: the resolved config (a dataclass or dict).
        resume: reuse an existing non-empty folder (its rounds.jsonl is kept and appended to).
    """
    path = Path(path)
    if path.exists() and not resume and any(path.iterdir()):
        raise FileExistsError(f"run folder {path} exists; pass resume=True or another run_id")
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    write_json(run.config_path, {
        "experiment": experiment,
        "run_id": path.name,
        "config": config,
        "command": _command(),
        "git_commit": git_commit(),
        "environment": environment_info(),
    })
    return run


# Fields that differ between two runs of the same config by nature: wall-clock times and measured resources
# (peak RSS, page-cache growth, machine load). Everything else in results JSON must be identical.
VOLATILE_KEY = re.compile(r"(_s|-s|_s_total|_seconds|_seconds_runs|_s_runs)$|^(seconds|loadavg_1min|git_commit)$"
                          r"|rss|vmhwm|hwm_|flop_rate|peak_ratio|step_time_ratio|per_second")


def _walk(a: Any, b: Any, where: str, out: list[str], volatile: re.Pattern, roots: tuple[str, str]) -> None:
    if isinstance(a, str) and isinstance(b, str):  # each tree's own location is not a difference
        a, b = a.replace(roots[0], "<root>"), b.replace(roots[1], "<root>")
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if volatile.search(str(k)):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'second' if k not in a else 'first'}")
            else:
                _walk(a[k], b[k], f"{where}.{k}", out, volatile, roots)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", out, volatile, roots)
    elif a != b:
        out.append(f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}")


def compare_trees(first: str | Path, second: str | Path, volatile: re.Pattern = VOLATILE_KEY) -> list[str]:
    """Compare every ``*.json`` / ``*.jsonl`` file of two results trees; return one line per difference.

    A line is ``<file>:<key path>: <first> != <second>``, or names a file or key present on one side only.
    Keys matching ``volatile`` (wall-clock times, measured memory and ratios of it, machine load, the commit) are
    skipped, and each tree's own location inside a path counts as the same (``<root>``).
    """
    first, second = Path(first), Path(second)
    roots = (relative_to_repo(str(first.resolve())), relative_to_repo(str(second.resolve())))
    files = {p.relative_to(root) for root in (first, second) for p in root.rglob("*.json*")
             if p.suffix in (".json", ".jsonl") and "logs" not in p.parts}
    out: list[str] = []
    for rel in sorted(files):
        a, b = first / rel, second / rel
        if not a.exists() or not b.exists():
            out.append(f"{rel}: only in {'second' if not a.exists() else 'first'}")
            continue
        load = read_jsonl if rel.suffix == ".jsonl" else read_json
        _walk(load(a), load(b), str(rel), out, volatile, roots)
    return out
