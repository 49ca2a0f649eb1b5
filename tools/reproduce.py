"""The main job behind `make reproduce`: corpus, seed model, then every notebook under papermill, timed.

    python tools/reproduce.py --profile quick                      # the quick reproduction (after `make setup`)
    python tools/reproduce.py --size teaching --results-root /tmp/r  # every notebook at its teaching size

Writes ``<results-root>/reproduce.json``: ``{"profile", "size", "wall_seconds", "cores", "steps": [{"name",
"seconds"}], "notebooks": [{"name", "seconds", "status", "load_avg_15min"}]}`` and the executed notebooks under
``<results-root>/notebooks/``. A notebook that fails is recorded with its error and the run goes on to the
next one (each notebook writes its own results atomically, so earlier results stay in place); the command
exits non-zero if any failed. Two runs with the same seed give the same results JSON except wall-clock
fields: compare them with ``python tools/compare_results.py A B``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedasr.results import write_json  # noqa: E402


# The notebooks' parameters that name a profile's corpus and configs (committed defaults: the quick profile)
PROFILE_PARAMETERS = {"00_data": {"corpus": "data/{p}"},
                      "01_seed_model": {"config_file": "configs/seed/{p}.toml", "run_name": "seed-{p}"},
                      "02_federated_training": {"config_file": "configs/federated/{p}.toml"},
                      "04_user_corrections": {"config_file": "configs/quality/{p}.toml"}}


def notebook_parameters(name: str, size: str, results_root: str, profile: str = "quick") -> dict:
    """The papermill parameters of notebook ``name``: its teaching table at ``size = "teaching"``; for another
    profile than quick (e.g. an imported corpus, `make import-configs`), its corpus and configs where they exist."""
    params = {"results_root": results_root}
    if size == "teaching":
        table = tomllib.loads((ROOT / "notebooks" / "teaching.toml").read_text()).get(name, {})
        params = {**table, **params}
    elif profile != "quick":
        wanted = {k: v.format(p=profile) for k, v in PROFILE_PARAMETERS.get(name, {}).items()}
        if all((ROOT / v).exists() for k, v in wanted.items() if k in ("corpus", "config_file")):
            params = {**wanted, **params}
    return params


def merge_rerun(before: dict, rerun: dict) -> dict:
    """``before`` with the notebooks of ``rerun`` replaced by name: ``wall_seconds`` swaps their old seconds for the
    new ones (the time a full run would have taken with them), and ``reruns`` records which ran apart."""
    new = {n["name"]: n for n in rerun["notebooks"]}
    old = {n["name"]: n for n in before["notebooks"]}
    merged = [new.get(n["name"], n) for n in before["notebooks"]] + [n for k, n in new.items() if k not in old]
    wall = before["wall_seconds"] - sum(old[k]["seconds"] for k in new if k in old)
    wall += sum(n["seconds"] for n in new.values())
    return {**before, "wall_seconds": wall, "notebooks": merged,
            "reruns": [*before.get("reruns", []), {"notebooks": sorted(new), "seconds": rerun["wall_seconds"]}]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", help="corpus/seed profile for the data and seed steps (Default: quick)")
    ap.add_argument("--size", choices=("full", "teaching"), default="full",
                    help="notebook parameters: as committed, or notebooks/teaching.toml (Default: full)")
    ap.add_argument("--results-root", default="results", help="where notebooks write (Default: results)")
    ap.add_argument("--skip-steps", action="store_true", help="do not run `make data summary seed` first")
    ap.add_argument("--only", nargs="*", help="notebook names to run (Default: all notebooks/[0-9]*.ipynb); their "
                    "entries replace those of an existing reproduce.json (`merge_rerun`)")
    args = ap.parse_args(argv)

    import papermill as pm

    from fedasr.notebook import ipc_kernel_manager

    os.chdir(ROOT)
    t0 = time.perf_counter()
    steps = []
    if not args.skip_steps:
        for target in ("data", "summary", "seed"):
            t = time.perf_counter()
            subprocess.run(["make", target, f"PROFILE={args.profile}"], check=True)
            steps.append({"name": f"make {target}", "seconds": time.perf_counter() - t})
    out_dir = Path(args.results_root) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    notebooks = []
    for name in names:
        t = time.perf_counter()
        print(f"reproduce: {name}", flush=True)
        try:
            pm.execute_notebook(f"notebooks/{name}.ipynb", str(out_dir / f"{name}.ipynb"), cwd=str(ROOT),
                                parameters=notebook_parameters(name, args.size, args.results_root, args.profile),
                                progress_bar=False, kernel_manager_class=ipc_kernel_manager())
            status = "ok"
        except Exception as e:  # noqa: BLE001 — record it, keep the results of the others
            status = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
            print(f"reproduce: {name} {status}", file=sys.stderr, flush=True)
        # the 15-minute load average when it ends: near the core count when the machine ran this alone, above it
        # when other work shared the cores (timings are then longer than a quiet machine's)
        notebooks.append({"name": name, "seconds": time.perf_counter() - t, "status": status,
                          "load_avg_15min": round(os.getloadavg()[2], 2)})
    record = {"profile": args.profile, "size": args.size, "wall_seconds": time.perf_counter() - t0,
              "cores": os.cpu_count(), "steps": steps, "notebooks": notebooks}
    path = Path(args.results_root) / "reproduce.json"
    if args.only and path.exists():  # a rerun of some notebooks (e.g. one that failed) replaces only their entries
        record = merge_rerun(json.loads(path.read_text()), record)
    write_json(path, record)
    failed = [n["name"] for n in notebooks if n["status"] != "ok"]
    print(f"reproduce: {len(notebooks) - len(failed)}/{len(notebooks)} notebooks ok in "
          f"{record['wall_seconds'] / 60:.1f} min" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
