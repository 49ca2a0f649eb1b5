"""How far WCA's weights move from plain example-count weighting, round by round (issue 18: "why does WCA do
nothing here?").

    python tools/wca_weights.py [--root results/quality] [--reference filtering] [--out results/quality/wca_weights.json]

For every round where the reference variant (example-count weights) and a WCA variant sampled the same clients,
both weight vectors are normalised to sum to 1 and compared by total-variation distance, ½·Σ|w_ref − w_wca|: the
share of the aggregate's mass that WCA moves between clients (0 = the same update as the reference, 1 = disjoint).
Reads only ``<root>/<variant>/rounds.jsonl`` (``sampled`` and ``weights``); with several seeds, every
``<root>/seed<k>/`` is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedasr.results import relative_to_repo, write_json  # noqa: E402


def _rounds(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["round"]: r for r in rows if r.get("round", 0) > 0 and r.get("weights")}


def tv_distances(reference: Path, variant: Path) -> list[float]:
    """Per shared round: total-variation distance between the two runs' normalised client weights."""
    ref, var = _rounds(reference / "rounds.jsonl"), _rounds(variant / "rounds.jsonl")
    out = []
    for rnd in sorted(set(ref) & set(var)):
        a, b = ref[rnd]["weights"], var[rnd]["weights"]
        if sorted(a) != sorted(b):
            continue  # other clients in this round: not comparable
        keys = sorted(a)
        wa, wb = (np.array([w[k] for k in keys], dtype=float) for w in (a, b))
        out.append(float(0.5 * np.abs(wa / wa.sum() - wb / wb.sum()).sum()))
    return out


def summarize(root: Path, reference: str = "filtering", variants: tuple[str, ...] = ("wca_loss", "wca_frequency")):
    """``{"reference", "folders", "variants": {name: {"rounds", "tv_median", "tv_mean", "tv_max"}}}``."""
    folders = sorted(p for p in root.glob("seed*") if p.is_dir()) or [root]
    res = {}
    for name in variants:
        tv = [d for f in folders if (f / reference).is_dir() and (f / name).is_dir()
              for d in tv_distances(f / reference, f / name)]
        res[name] = {"rounds": len(tv), "tv_median": float(np.median(tv)) if tv else None,
                     "tv_mean": float(np.mean(tv)) if tv else None, "tv_max": float(np.max(tv)) if tv else None}
    return {"what": "total-variation distance between WCA's and example-count weights, per round (tools/wca_weights.py)",
            "reference": reference, "folders": [relative_to_repo(str(f)) for f in folders], "variants": res}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="results/quality")
    ap.add_argument("--reference", default="filtering")
    ap.add_argument("--out", default="results/quality/wca_weights.json")
    args = ap.parse_args(argv)
    out = summarize(Path(args.root), args.reference)
    write_json(Path(args.out), out)
    print(json.dumps(out["variants"], indent=1))
    return out


if __name__ == "__main__":
    main()
