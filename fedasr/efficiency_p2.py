"""P2's pairing (DESIGN E2, issue 5): the bytes of the efficiency table's ``p2_row`` at full scale with the final user
WER of the same codecs and OMC in real federated training at small scale (``quality_variant`` of the experiment
``quality_config``, configs/efficiency/quality_cost.toml). `check_quality_variant` fails when the two differ;
`p2_quality` reads the variant's WER change against its reference run (means over seeds where several ran)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedasr import config as config_lib
from fedasr.federated.config import FedConfig
from fedasr.results import REPO_ROOT as ROOT

__all__ = ["check_pairing", "p2_quality"]


def _codec_key(c: dict[str, Any]) -> dict[str, Any]:
    """What P2's pairing compares of an upload codec (the grid's symmetry matters only for integer codes)."""
    key = {"name": c["name"], "lossless": c["lossless"]}
    if c["name"].startswith("int"):
        key["symmetric"] = c["symmetric"]
    return key


def _omc_key(o: dict[str, Any] | None) -> dict[str, Any]:
    """What P2's pairing compares of OMC (the transform matters only when weights are stored quantized)."""
    if not o or not o["bits"]:
        return {"bits": 0}
    return {"bits": o["bits"], "transform": o["transform"]}


def check_pairing(cfg: Any, row: dict[str, Any], source: str | Path | None = None) -> FedConfig:
    """Check that ``cfg.quality_variant`` federates with the same OMC and upload codec as ``cfg.p2_row``.

    Loads the experiment ``cfg.quality_config`` (a `fedasr.experiments.FederatedExperiment`) and builds
    the variant's `FedConfig`. Its ``omc`` (bits, transform) and ``transport.upload`` (name, symmetric,
    lossless) must be the p2 row's (``cfg.omc`` and ``cfg.transport.upload`` for ``+omc`` and later rows),
    since P2 pairs that row's bytes with the variant's WER.

    Args:
        cfg: the efficiency config (`fedasr.efficiency.EfficiencyConfig`, ``quality_variant`` set).
        row: the settings of its ``p2_row`` (`fedasr.efficiency.row_settings`).
        source: the efficiency config's file, named in the error (default: "the efficiency config").

    Returns:
        The variant's `FedConfig`.

    Raises:
        ConfigError: the variant does not exist or differs (the message names both files).
    """
    from fedasr import experiments  # the ASR task and Flower launchers: only when P2 is paired

    ours = f"{source}" if source is not None else "the efficiency config"
    exp = config_lib.load(experiments.FederatedExperiment, ROOT / cfg.quality_config)
    if cfg.quality_variant not in exp.variants:
        raise config_lib.ConfigError(f"{ours}: quality-variant {cfg.quality_variant!r} is not a variant of "
                                     f"{cfg.quality_config} ({sorted(exp.variants)})")
    fed = experiments.variant_config(exp, cfg.quality_variant).fed
    want = {"omc": _omc_key(row["omc"]), "transport.upload": _codec_key(row["upload"])}
    got = {"omc": _omc_key(dataclasses.asdict(fed.omc)),
           "transport.upload": _codec_key(dataclasses.asdict(fed.transport.upload))}
    diff = [k for k in want if want[k] != got[k]]
    if diff:
        raise config_lib.ConfigError(
            f"P2 pairs the {cfg.p2_row!r} row of {ours} with variant {cfg.quality_variant!r} of {cfg.quality_config}, "
            f"but they differ in {diff}: {ours} has {({k: want[k] for k in diff})}, {cfg.quality_config} has "
            f"{({k: got[k] for k in diff})}; make [omc] / [transport.upload] and [variants.{cfg.quality_variant}] agree")
    return fed


def p2_quality(cfg: Any) -> dict[str, Any] | None:
    """The small-scale WER change of ``cfg.quality_variant`` vs its reference run (None if not run yet)."""
    path = ROOT / cfg.quality_summary
    if not cfg.quality_variant or not path.exists():
        return None
    q = json.loads(path.read_text())
    row = next((r for r in q.get("relative", []) if r["variant"] == cfg.quality_variant), None)
    if row is None:
        return None
    return {"variant": cfg.quality_variant, "reference": q.get("relative_to"), "summary": cfg.quality_summary,
            "wer_user": row["wer_user"], "wer_user_rel": row["wer_user_rel"],
            "small_scale_transport_ratio": row["transport_ratio"], "within_3pct": row["wer_user_rel"] <= 0.03}
