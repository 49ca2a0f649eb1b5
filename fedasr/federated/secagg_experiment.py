"""The secure-aggregation experiment (issue 21): the same FedSGD run with a plain vs a masked upload.

``python -m fedasr.federated.secagg_experiment --config configs/reliability/secagg.toml --out results/reliability/parts/secagg.json``
runs the variants of the config on Flower's Simulation Engine (`fedasr.experiments.run_federated_experiment`) and
writes the ``secagg`` part of ``results/reliability/summary.json`` (`fedasr.reliability.assemble` merges it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["CLAIMS", "cli_main", "secagg_part"]

# What is and is not a security claim (the full statement: `fedasr.federated.secagg`'s docstring)
CLAIMS = {
    "claimed": "an honest-but-curious server facing non-colluding clients learns only the sum of >= min-cohort "
               "masked uploads; one masked upload alone is uniform modulo 2^m",
    "not_claimed": ["a malicious server: no double masking, so lying about a dropout unmasks that client",
                    "unauthenticated public keys (a server could substitute its own)",
                    "robustness to malicious clients beyond the range clip", "differential privacy of the aggregate",
                    "a security evaluation: this is a simulation on one machine, not audited code"],
    "revealed_in_setup": ["per-variable max |x_i| and the norm of each client's update",
                          "num-examples, loss, WCA statistics (the weight inputs)",
                          "which clients took part and which dropped"],
}


def secagg_part(rows: Mapping[str, Sequence[Mapping[str, Any]]], finals: Mapping[str, Any] | None = None,
                pairs: Sequence[tuple[str, str]] = (("int8_sr", "int8_sr_secagg"), ("int4_sr", "int4_sr_secagg")),
                settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``secagg`` part from the variants' ``rounds.jsonl`` rows: bytes ratios and final WERs per codec pair.

    ``bytes_ratio`` (the contract's) is the first pair's masked ÷ plain ``bytes_up`` over the run (same clients and
    rounds); ``bytes_ratio_with_setup`` adds the setup and recovery exchanges' upload bytes.
    """
    out_pairs = []
    for plain, masked in pairs:
        if plain not in rows or masked not in rows:
            continue
        p = [r for r in rows[plain] if r.get("round", 0) > 0]
        m = [r for r in rows[masked] if r.get("round", 0) > 0]
        up_p, up_m = sum(r.get("bytes_up", 0) for r in p), sum(r.get("bytes_up", 0) for r in m)
        extra = sum((r.get("secagg") or {}).get("overhead_up", 0) for r in m)
        wer = {k: _final_wer(rows[k]) for k in (plain, masked)}
        out_pairs.append({"plain": plain, "secagg": masked, "bytes_up_plain": up_p, "bytes_up_secagg": up_m,
                          "uploads": {plain: sum(r.get("num_succeeded", 0) for r in p),
                                      masked: sum(r.get("num_succeeded", 0) for r in m)},
                          "bytes_ratio": up_m / up_p, "bytes_ratio_with_setup": (up_m + extra) / up_p,
                          "modulus_bits": next(((r.get("secagg") or {}).get("modulus_bits") for r in m), None),
                          "wer_user": wer, "rounds_completed": {k: sum(r.get("status") == "ok" for r in rows[k]
                                                                       if r.get("round", 0) > 0) for k in wer}})
    return {"available": bool(out_pairs), "bytes_ratio": out_pairs[0]["bytes_ratio"] if out_pairs else None,
            "pairs": out_pairs, "seeds": [0], **(dict(finals or {})), "settings": dict(settings or {}),
            "method": "pairwise additive masking (Bonawitz et al. 2017 core, no double masking) over int8/int4 "
                      "stochastic-rounding codes on a common grid; X25519 + HKDF-SHA256 + AES-256-CTR",
            "claims": CLAIMS,
            "note": "one seed: an anecdote; no claim of a quality difference between plain and masked runs"}


def _final_wer(rows: Sequence[Mapping[str, Any]]) -> float | None:
    evals = [r["eval"] for r in sorted(rows, key=lambda r: r["round"]) if r.get("eval")]
    return evals[-1].get("wer_user") if evals else None


def cli_main(argv: list[str] | None = None) -> dict:
    """Run ``configs/reliability/secagg.toml``'s variants and write the ``secagg`` part file."""
    from fedasr import config as config_lib
    from fedasr import results
    from fedasr.experiments import FederatedExperiment, run_federated_experiment
    from fedasr.federated.checkpoint import load_checkpoint
    from fedasr.federated.server_app import checkpoint_path

    p = argparse.ArgumentParser(description=cli_main.__doc__)
    p.add_argument("--config", default="configs/reliability/secagg.toml", help="(Default: %(default)s)")
    p.add_argument("--out", default="results/reliability/parts/secagg.json", help="(Default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="reuse finished runs instead of rerunning them (Default: rerun)")
    args = p.parse_args(argv)
    exp = config_lib.load(FederatedExperiment, args.config)
    runs = run_federated_experiment(exp, rerun=not args.keep)
    rows = {name: run.rounds() for name, run in runs.items()}
    finals = {}
    if "int8_sr_secagg" in runs and "int8_sr_secagg_unmasked" in runs:  # masks cancel: bitwise-equal final models
        a, b = (load_checkpoint(checkpoint_path(runs[k].path))["weights"]
                for k in ("int8_sr_secagg", "int8_sr_secagg_unmasked"))
        finals["masked_equals_unmasked_bitwise"] = all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    settings = {"config": args.config, "fed": config_lib.to_dict(exp.fed), "variants": exp.variants,
                "task": {k: v for k, v in config_lib.to_dict(exp.task).items()
                         if k in ("corpus", "labels", "eval-splits", "eval-max-utterances", "seed-model")},
                "runs": {k: results.relative_to_repo(str(r.path)) for k, r in runs.items()}}
    part = secagg_part(rows, finals, settings=settings)
    results.write_json(args.out, part)
    print(json.dumps({k: part[k] for k in ("available", "bytes_ratio")}))
    return part


if __name__ == "__main__":
    cli_main()
