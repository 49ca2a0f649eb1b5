"""What leaves a device: check that a ClientApp's reply holds model arrays and aggregate statistics only.

A TRAIN reply (`client_app.handle_train`) holds the ``"arrays"`` ArrayRecord (the gradient or delta of the model
variables, or their ``/data``, ``/scale``, ``/offset`` codes when the upload is encoded), a ``"metrics"``
MetricRecord of aggregates (`METRIC_KEYS`: example count, mean loss, compute time, steps, partial training's
sizes, the DP clipping bit, the process's resident memory (`fedasr.ledger`), and the WCA statistics: counts and the fixed-size hashed histogram of corrected
words, `fedasr.refinement.ClientStats`), and with an encoded upload a ``"transport"`` ConfigRecord describing
the codec. "Aggregate" means a sum or mean over all of the client's utterances whose size does not depend on
how many it has. What the WCA histogram still reveals is discussed in `fedasr.federated.privacy`.
tests/test_privacy_messages.py runs the ASR task's ClientApp and checks every reply with `audit_reply`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedasr import compression

__all__ = ["METRIC_KEYS", "audit_reply"]

# The reply's metric keys (all scalar but "wca-hist"): client_update, partial training, DP, WCA (refinement), and
# the ledger's measurement of the client process (fedasr.ledger: resident memory, a device fact, no user data)
METRIC_KEYS = frozenset({"num-examples", "loss", "compute-s", "steps", "trained-params", "budget-bytes",
                         "estimate-bytes", "dp-clipped", "wca-utterances", "wca-corrections", "wca-kept", "wca-hist",
                         "peak-rss-bytes", "start-rss-bytes", "hwm-reset"})
_CODEC_PARTS = ("data", "scale", "offset")
_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "uint8", "int8", "int16", "int32", "int64"})
# words of fedasr's own messages when a client declines (refinement.ClientDeclined, asr_task, ledger.OverBudget):
# not client text
_REASON_WORDS = frozenset("client declines round usable labelled utterances skipped filtered corrections "
                          "uncorrected clientdeclined valueerror overbudget analytic peak bytes exceeds tier's "
                          "tier budget high flagship custom".split())
_META_KEYS = frozenset({"codec", "shape", "dtype", "bits", "data_dtype", "zipped", "packed_dtype", "packed_numel"})


def _tokens(s: str) -> set[str]:
    """Lower-case words of ``s`` (letters, digits and inner apostrophes: "what's")."""
    return {w.strip("'") for w in re.split(r"[^a-z0-9']+", s.lower())} - {""}


def _audit_meta(meta: str, shapes: Mapping[str, Sequence[int]]) -> tuple[list[str], list[str]]:
    """Check an upload's codec description: ``{variable: {known key: number | codec | dtype}}``; return
    ``(violations, its strings)``."""
    try:
        desc = json.loads(meta)
    except ValueError:
        return ["transport description is not JSON"], [meta]
    if not isinstance(desc, dict):
        return ["transport description is not an object"], [meta]
    bad, strings = [], []
    for var, d in desc.items():
        strings.append(str(var))
        if var not in shapes or not isinstance(d, dict) or not set(d) <= _META_KEYS:
            bad.append(f"transport description of {str(var)[:40]!r} is not a codec description of a variable")
            continue
        for v in d.values():
            if isinstance(v, str):
                strings.append(v)
                if v not in compression.CODECS and v not in _DTYPES:
                    bad.append(f"transport description holds an unexpected string {v[:40]!r}")
    return bad, strings


def audit_reply(reply: Any, shapes: Mapping[str, Sequence[int]], texts: Iterable[str], buckets: int,
                drop_reasons: Iterable[str] = ()) -> list[str]:
    """Return why a ClientApp's TRAIN reply holds more than model arrays and aggregate statistics ([] = clean).

    Checks: the RecordDict holds only ``arrays`` / ``metrics`` / ``transport``; every array is a trainable
    variable of its shape (or its ``/data``, ``/scale``, ``/offset`` codes, no larger than the variable);
    every metric key is in `METRIC_KEYS` or ``wca-drop-<reason>``, scalar, except ``wca-hist`` with exactly
    ``buckets`` counts; the transport description names variables, codecs and dtypes only; and no string
    anywhere (names, keys, descriptions, an error's reason) holds one of ``texts`` (the client's transcripts,
    hypotheses, corrections, labels: any of 2+ words as a substring) or a word of theirs of 4+ letters, except
    protocol tokens (of variable names, metric keys, codec descriptions, decline messages), which replies hold
    whatever the data.
    """
    texts = [t.lower().strip() for t in texts]
    drop_reasons = list(drop_reasons)
    vocabulary = [*shapes, *METRIC_KEYS, *drop_reasons, *_META_KEYS, *compression.CODECS, *_CODEC_PARTS, "upload"]
    protocol = set().union(*(_tokens(s) for s in vocabulary))
    words = {w for t in texts for w in _tokens(t) if len(w) >= 4} - protocol - _REASON_WORDS
    phrases = {t for t in texts if len(t.split()) >= 2}
    bad, strings = [], []
    if reply.has_error():
        strings.append(str(reply.error.reason))
    else:
        content = reply.content
        bad += [f"unexpected record {k!r}" for k in sorted(set(content.keys()) - {"arrays", "metrics", "transport"})]
        for name, arr in content.get("arrays", {}).items():
            strings.append(name)
            base, _, part = name.rpartition("/")
            if name in shapes:
                if tuple(arr.shape) != tuple(shapes[name]):
                    bad.append(f"array {name!r} has shape {tuple(arr.shape)}, not the variable's")
            elif base in shapes and part in _CODEC_PARTS:
                if int(np.prod(arr.shape)) > int(np.prod(shapes[base])):
                    bad.append(f"array {name!r} is larger than its variable")
            else:
                bad.append(f"array {name[:40]!r} is not a model variable")
        allowed = METRIC_KEYS | {f"wca-drop-{r}" for r in drop_reasons}
        for key, value in content.get("metrics", {}).items():
            strings.append(key)
            if key not in allowed:
                bad.append(f"metric {key[:40]!r} is not an aggregate statistic we send")
            elif isinstance(value, list) and (key != "wca-hist" or len(value) != buckets):
                bad.append(f"metric {key!r} is a list of {len(value)} values (per-utterance?)")
        for key, value in content.get("transport", {}).items():
            strings.append(key)
            if key != "upload":
                bad.append(f"transport entry {key[:40]!r} is not the upload's description")
            meta_bad, meta_strings = _audit_meta(str(value), shapes)
            bad += meta_bad
            strings += meta_strings
    for s in strings:
        hits = sorted(p for p in phrases if p in s.lower()) + sorted(words & _tokens(s))
        if hits:
            bad.append(f"client text in the reply: {hits[:3]}")
    return bad
