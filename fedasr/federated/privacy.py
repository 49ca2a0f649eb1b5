"""User-level differential privacy for FedSGD / FedAvg (``[fed.dp]``), its accountant, and what leaves a device.

**DP-FedSGD / DP-FedAvg** (McMahan et al. 2018, "Learning differentially private recurrent language models";
Flower's ``FixedClipping`` strategies follow the same paper). ``x_i`` is what client i actually sends: the
gradient ``g_i`` (FedSGD) or the delta ``Δ_i`` (FedAvg), over the variables it uploads (all, or a partial set)::

    device i:  x̃_i = x_i · min(1, C / ‖x_i‖₂)            # `clip_for_upload`, BEFORE transport encoding: if the
                                                          # decoded payload's norm exceeds C it shrinks and re-encodes
    server:    x̂_i = decode(payload_i) · min(1, C / ‖decode(payload_i)‖₂)   # re-clip (needed = a violation)
               S   = Σ_{i ∈ succeeded} w_i · x̂_i           # every trainable variable (absent = 0), w_i ∈ [0, 1]
               G_t = (S + N(0, (z·C)² I)) / K              # K = clients SAMPLED this round (public, fixed)

Sensitivity. Adding or removing one user changes ``S`` by ``w_j x̂_j``, of norm ≤ C; replacing one changes it
by at most 2C. The denominator K is the number sampled, not the number that replied, so a dropout changes no
normaliser (McMahan et al.'s fixed-denominator estimator; it shrinks G_t by the dropout fraction). The noise
on the mean is therefore ``N(0, (z·C/K)²)`` per coordinate (= Flower's ``compute_stdv(z, C, K)``).

Weights under WCA (``dp.weighting``). WCA's "frequency" weights make client i's weight depend on the other
clients' histograms of the round (an IDF), so one user would move every weight and the sensitivity would be
K·C, not C. Hence:

* ``"uniform"`` (default): ``w_i = 1`` (fixed equal weights; ``fed.weighting`` is ignored under DP);
* ``"capped"``: ``w_i = min(1, a_i / dp.weight-cap)`` where ``a_i`` is the client's weight computed from its
  **own** upload alone (``n_i``, or WCA "corrections" / "loss" / "uniform"); ``fed.weighting = "frequency"``
  or ``"frequency-common"`` with ``"capped"`` is rejected by `FedConfig`. Both keep ``w_i ≤ 1`` and
  per-client, so the sensitivities above hold.

Accounting (`Accountant`, `compute_epsilon`). Flower's ``flwr.supercore.privacy_accounting.RdpAccountant``
(Google's ``dp-accounting``; ``flwr[dp]``) composes one sampled Gaussian per round. The server samples exactly
K of the N clients without replacement, so the default ``dp.accounting = "without-replacement"`` uses
Flower's ``WITHOUT_REPLACEMENT`` + ``REPLACE_ONE`` model (Wang, Balle, Kasiviswanathan 2019), whose noise
multiplier is relative to the replace-one sensitivity 2C: the event's multiplier is ``z / 2``.
``"poisson"`` (``POISSON`` + ``ADD_OR_REMOVE_ONE``, ``q = K/N``, multiplier z) is the figure most papers
report (McMahan et al. 2018; Mironov et al. 2019); it is exact only for Poisson sampling, which we do not
do. δ defaults to 1/N. Every round up to t is counted after round t, skipped or not (conservative; a
resumed run re-composes its earlier rounds). ε covers the model update only: the metrics a client sends
(loss, counts, the clipping bit, WCA statistics) are outside it, as in Flower.

Why not Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping`` as they stand: they clip
``reply − sent`` over the same array keys, but a FedSGD reply is a gradient (not weights), an encoded reply
holds ``<var>/data`` codes (`transport`), and a partial reply holds a subset of keys; their clipping happens
before our decoding, so the bound would not hold on what is aggregated; and their accounting requires
``no-amplification`` and equal weights, while our sampling is of clients (not nodes) and WCA weights differ.
Used from Flower: the accountant (``RdpAccountant``, ``PrivacyConfig``, ``GaussianPrivacyEvent``,
``SamplingMethod``, ``NeighboringRelation``) and the noise formula (``compute_stdv``). `rdp_poisson_gaussian`
is an independent implementation (Mironov, Talwar, Zhang 2019, integer orders) the tests check Flower against.

**What leaves a device** (`fedasr.federated.audit`, tests/test_privacy_messages.py). A TRAIN reply holds:
the ``"arrays"`` ArrayRecord (the model variables' gradient/delta, or their codes/scales/offsets when encoded), a
``"metrics"`` MetricRecord of aggregate statistics (``num-examples``, mean ``loss``, ``compute-s``,
``steps``, partial training's sizes, ``dp-clipped``, and the WCA statistics: counts of utterances,
corrections, kept corrections, filter drops by reason, and the fixed-size hashed histogram of corrected
words), and with an encoded upload a ``"transport"`` ConfigRecord describing the codec. No audio, no text, no
per-utterance value. "Aggregate" means a sum or mean over all of the client's utterances with a size that
does not depend on how many it has.

What the WCA histogram reveals to an honest-but-curious server: which hashed buckets the user's corrected
words fall in, and how often. The hash (`refinement.word_bucket`) is public, so a dictionary attack maps
common words back (e.g. a contact name the recognizer kept missing); counts reveal how much the user
corrects. ``dp.histogram-noise`` ("laplace" with scale b, or "gaussian" with std σ, in counts; independent
of ``dp.enabled``) adds noise on the device to each bucket, then rounds and clips at 0 (post-processing). One
corrected word changes one bucket by 1, so Laplace gives ε = 1/b per corrected word (word-level, not
user-level: a user's histogram has no bound on its total), the Gaussian (ε, δ) of a sensitivity-1 query.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.supercore.differential_privacy import compute_stdv

from fedasr.federated import transport
from fedasr.federated.client_update import Update
from fedasr.federated.config import DPConfig, FedConfig
from fedasr.seeding import derive_seed

__all__ = ["update_norm", "clip_arrays", "clip_for_upload", "noise_histogram", "privatize_client_update",
           "DPAggregator", "Accountant", "compute_epsilon", "rdp_poisson_gaussian", "epsilon_from_rdp",
           "noise_for_epsilon", "plan_paper_scale", "PAPER_SCALE", "summarize_dp", "dp_result_row"]

_VIOLATION_TOL = 1e-4  # relative: a decoded norm above C·(1 + tol) counts as a violation (float rounding below)


# --- clipping (device and server) ---------------------------------------------------------------------------

def update_norm(arrays: Mapping[str, torch.Tensor]) -> float:
    """Return the global L2 norm ``‖x‖₂`` over all variables of an update (float64 accumulation)."""
    return math.sqrt(sum(float(torch.as_tensor(a).double().pow(2).sum()) for a in arrays.values()))


def clip_arrays(arrays: Mapping[str, torch.Tensor], clip: float) -> tuple[dict[str, torch.Tensor], float, float]:
    """Return ``(x · min(1, C/‖x‖), ‖x‖, factor)``; factor 1.0 leaves the tensors as they are (no copy)."""
    norm = update_norm(arrays)
    factor = 1.0 if norm <= clip else clip / norm
    if factor == 1.0:
        return dict(arrays), norm, 1.0
    return {k: v * factor for k, v in arrays.items()}, norm, factor


def clip_for_upload(update: Update, fed: FedConfig, client_seed: int, max_tries: int = 4) -> Update:
    """Clip the update the client will send to ``fed.dp.clip``, measured on what the server will decode.

    Uncompressed, that is the update itself. With ``fed.transport.upload`` the client encodes with the very
    generator the ClientApp uses (``derive_seed("upload", client_seed)``), decodes, and if quantization pushed
    the norm above C shrinks by ``C / ‖decoded‖`` (times 1 − 1e-6) and tries again. The metric ``dp-clipped``
    (0/1) says whether the raw update exceeded C. Partial uploads are clipped over the variables they hold.
    """
    c = fed.dp.clip
    arrays, norm, _ = clip_arrays(update.arrays, c)
    if fed.transport.compress_upload:
        for _ in range(max_tries):
            gen = torch.Generator().manual_seed(derive_seed("upload", client_seed))
            enc, meta, _ = transport.encode_arrays({k: v.contiguous() for k, v in arrays.items()},
                                                   fed.transport.upload, gen)
            sent = update_norm(transport.decode_arrays(enc, meta)[0])
            if sent <= c:
                break
            arrays = {k: v * (c / sent * (1 - 1e-6)) for k, v in arrays.items()}
    metrics = {**update.metrics, "dp-clipped": int(norm > c)}
    return Update(arrays, update.num_examples, metrics, update.client_id, update.kind)


def noise_histogram(metrics: Mapping[str, Any], dp: DPConfig, seed: int) -> dict[str, Any]:
    """Return ``metrics`` with its ``wca-hist`` noised on the device (``dp.histogram-noise``), as counts ≥ 0.

    Laplace(0, b) or N(0, σ²) per bucket (``dp.histogram-scale``), then rounded and clipped at 0
    (post-processing), so the server's `refinement.ClientStats.from_metrics` accepts it.
    """
    out = dict(metrics)
    if dp.histogram_noise == "none" or "wca-hist" not in out:
        return out
    hist = np.asarray(list(out["wca-hist"]), dtype=np.float64)
    rng = np.random.default_rng(seed)
    noise = rng.laplace(0.0, dp.histogram_scale, hist.shape) if dp.histogram_noise == "laplace" else \
        rng.normal(0.0, dp.histogram_scale, hist.shape)
    out["wca-hist"] = [int(v) for v in np.maximum(np.rint(hist + noise), 0)]
    return out


def privatize_client_update(update: Update, fed: FedConfig, client_seed: int) -> Update:
    """What the device does before packing its reply: clip (``dp.enabled``) and noise the WCA histogram."""
    if fed.dp.enabled:
        update = clip_for_upload(update, fed, client_seed)
    if fed.dp.histogram_noise != "none":
        update = dataclasses.replace(update, metrics=noise_histogram(update.metrics, fed.dp,
                                                                    derive_seed("wca-hist-noise", client_seed)))
    return update


# --- the server's DP aggregate --------------------------------------------------------------------------------

class DPAggregator:
    """The server's side of DP-FedSGD / DP-FedAvg: re-clip, bounded weights, fixed denominator, noise, ε.

    Args:
        fed: the federated config (``fed.dp``, ``fed.seed``).
        population: N, the number of clients the server samples from.
        shapes: the trainable variables' shapes (the noised aggregate covers all of them).
    """

    def __init__(self, fed: FedConfig, population: int, shapes: Mapping[str, Sequence[int]]) -> None:
        self.dp, self.seed = fed.dp, fed.seed
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.accountant = Accountant(self.dp, population, min(fed.clients_per_round, population))

    def aggregate(self, updates: Sequence[Update], num_sampled: int, server_round: int,
                  own_weight: Callable[[Update], float]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return ``(G_t, record)``: the noised mean (module docstring) and the round's ``dp`` record.

        ``own_weight(u)`` is a client's weight from its own upload alone (used by ``dp.weighting="capped"``).
        """
        dp = self.dp
        sums = {k: torch.zeros(s, dtype=torch.float32) for k, s in self.shapes.items()}
        violations, weights = 0, {}
        for u in updates:  # in client-id order (the caller sorts): the sum does not depend on arrival order
            arrays, norm, _ = clip_arrays(u.arrays, dp.clip)
            violations += norm > dp.clip * (1 + _VIOLATION_TOL)
            w = 1.0 if dp.weighting == "uniform" else min(1.0, max(0.0, own_weight(u)) / dp.weight_cap)
            weights[u.client_id] = w
            for k, x in arrays.items():
                sums[k].add_(torch.as_tensor(x).float(), alpha=w)
        std = dp.noise_multiplier * dp.clip  # on the sum; on the mean z·C/K = flwr's compute_stdv(z, C, K)
        if std > 0:
            gen = torch.Generator().manual_seed(derive_seed("dp-noise", self.seed, server_round))
            for k in sorted(sums):
                sums[k].add_(torch.randn(sums[k].shape, generator=gen), alpha=std)
        for s in sums.values():
            s.div_(num_sampled)
        eps = self.accountant.epsilon_after(server_round)
        clipped = [float(u.metrics.get("dp-clipped", 0)) for u in updates]
        record = {"clip": dp.clip, "noise_multiplier": dp.noise_multiplier,
                  "noise_std_on_mean": compute_stdv(dp.noise_multiplier, dp.clip, num_sampled),
                  "denominator": num_sampled, "weighting": dp.weighting, "weights": weights,
                  "clipped_fraction": sum(clipped) / len(clipped) if clipped else None,
                  "server_violations": int(violations), "epsilon": eps, "delta": self.accountant.delta,
                  "accounting": dp.accounting, "population": self.accountant.population}
        return sums, record


# --- accounting -------------------------------------------------------------------------------------------------

class Accountant:
    """ε after t rounds of the sampled Gaussian (Flower's ``RdpAccountant``), composed incrementally.

    ``epsilon_after(t)`` composes rounds up to t (each counted once, in any call order ≥ the last) and returns
    ε at ``delta`` (``dp.delta`` or 1/N), or None when z = 0 (no guarantee).
    """

    def __init__(self, dp: DPConfig, population: int, cohort: int) -> None:
        self.dp, self.population, self.cohort = dp, int(population), int(cohort)
        self.delta = dp.delta if dp.delta > 0 else 1.0 / self.population
        self._flwr = None
        self._rounds = 0

    def epsilon_after(self, rounds: int) -> float | None:
        """Compose up to ``rounds`` rounds and return ε (None: z = 0)."""
        if self.dp.noise_multiplier <= 0:
            return None
        if self._flwr is None:
            self._flwr, self._event = _flower_accountant(self.dp.accounting, self.dp.noise_multiplier, self.cohort,
                                                         self.population, self.delta)
        if rounds > self._rounds:
            self._flwr.compose(self._event, rounds - self._rounds)
            self._rounds = rounds
        return float(self._flwr.get_epsilon(self.delta))


def _flower_accountant(accounting: str, z: float, cohort: int, population: int, delta: float,
                       orders: Sequence[float] | None = None) -> tuple[Any, Any]:
    """Flower's ``RdpAccountant`` and the per-round ``GaussianPrivacyEvent`` (module docstring: the models)."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    if accounting == "poisson":
        model, relation, z_event = SamplingMethod.POISSON, NeighboringRelation.ADD_OR_REMOVE_ONE, z
    elif accounting == "without-replacement":  # replace-one sensitivity of the clipped sum is 2C
        model, relation, z_event = SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE, z / 2
    else:
        raise ValueError(f"unknown dp.accounting {accounting!r}: use 'without-replacement' or 'poisson'")
    acc = RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population, neighboring_relation=relation,
                                      sampling_method=model), orders=None if orders is None else tuple(orders))
    return acc, GaussianPrivacyEvent(noise_multiplier=z_event, sample_size=cohort, population_size=population)


def compute_epsilon(noise_multiplier: float, cohort: int, population: int, rounds: int, delta: float,
                    accounting: str = "without-replacement", orders: Sequence[float] | None = None) -> float:
    """ε after ``rounds`` rounds of K = ``cohort`` of N = ``population`` clients with noise multiplier z (Flower)."""
    if noise_multiplier <= 0:
        return math.inf
    acc, event = _flower_accountant(accounting, noise_multiplier, cohort, population, delta, orders)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def rdp_poisson_gaussian(q: float, z: float, orders: Sequence[int]) -> np.ndarray:
    """RDP ε(α) of one Poisson-sampled Gaussian (rate q, noise multiplier z) at integer orders α ≥ 2.

    Mironov, Talwar, Zhang 2019, §3.3: ``ε(α) = log(A_α) / (α − 1)`` with (summed in log space)
    ``A_α = Σ_{k=0}^{α} C(α,k) (1−q)^{α−k} q^k exp((k² − k) / (2 z²))``.
    """
    out = []
    for a in orders:
        if int(a) != a or a < 2:
            raise ValueError(f"orders must be integers >= 2, got {a}")
        a = int(a)
        if q >= 1:
            out.append(a / (2 * z * z))
            continue
        terms = [math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1) + (a - k) * math.log1p(-q)
                 + (k * math.log(q) if k else 0.0) + (k * k - k) / (2 * z * z) for k in range(a + 1)]
        m = max(terms)
        out.append((m + math.log(sum(math.exp(t - m) for t in terms))) / (a - 1))
    return np.asarray(out)


def epsilon_from_rdp(rdp: Sequence[float], orders: Sequence[float], delta: float, improved: bool = True) -> float:
    """ε at δ from RDP values: ``min_α ε(α) + log(1/δ)/(α−1)`` (Mironov 2017, Prop. 3), or with
    ``improved`` the bound of Balle et al. 2020 (Prop. 12) that ``dp-accounting`` uses."""
    best = math.inf
    for a, r in zip(orders, rdp):
        e = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1) if improved else r + math.log(1 / delta) / (a - 1)
        best = min(best, e)
    return max(0.0, best)


# --- what DP would take at the paper's scale ----------------------------------------------------------------------

# The paper gives no DP numbers, population, cohort or rounds (paper.md §2.6, §5 row 7). Our assumptions: a
# production population of 10^6 eligible devices (McMahan et al. 2018 trained their DP LM on 763,430 users),
# 1,000 rounds (the upper end of paper.md §5 row 7's 300–1,000) and δ = 10^-6 = 1/N.
PAPER_SCALE = {"population": 1_000_000, "rounds": 1000, "delta": 1e-6, "target_epsilon": 10.0}


def noise_for_epsilon(target_epsilon: float, cohort: int, population: int, rounds: int, delta: float,
                      accounting: str = "without-replacement", tol: float = 1e-3) -> float:
    """The smallest noise multiplier z (to ``tol``) with ε ≤ ``target_epsilon`` after ``rounds`` (bisection)."""
    lo, hi = 0.0, 1.0
    while compute_epsilon(hi, cohort, population, rounds, delta, accounting) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError("no noise multiplier below 1e4 reaches the target")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if compute_epsilon(mid, cohort, population, rounds, delta, accounting) <= target_epsilon \
            else (mid, hi)
    return hi


def plan_paper_scale(cohorts: Iterable[int] = (100, 500, 1000, 5000, 10000), max_noise_on_mean: float = 1e-3,
                     accounting: str = "without-replacement", **scale: float) -> dict[str, Any]:
    """Cohort sizes K and the noise multiplier z each needs for ε ≤ 10 at the paper's scale (`PAPER_SCALE`).

    Returns ``{"assumptions", "rows": [{"cohort", "noise_multiplier", "noise_std_on_mean_over_clip" (= z/K),
    "epsilon"}], "recommended"}``: the smallest K whose noise on the mean is ≤ ``max_noise_on_mean``·C (our
    utility rule of thumb, not a number from the paper or the literature), or None.
    """
    s = {**PAPER_SCALE, **scale}
    rows = []
    for k in cohorts:
        z = noise_for_epsilon(s["target_epsilon"], k, int(s["population"]), int(s["rounds"]), s["delta"], accounting)
        rows.append({"cohort": k, "noise_multiplier": z, "noise_std_on_mean_over_clip": z / k,
                     "epsilon": compute_epsilon(z, k, int(s["population"]), int(s["rounds"]), s["delta"], accounting)})
    ok = [r for r in rows if r["noise_std_on_mean_over_clip"] <= max_noise_on_mean]
    return {"assumptions": {**s, "accounting": accounting, "max_noise_on_mean": max_noise_on_mean,
                            "source": "assumed: the paper reports no DP, population, cohort or rounds"},
            "rows": rows, "recommended": ok[0] if ok else None}


def summarize_dp(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Whole-run DP totals from ``rounds.jsonl`` rows (None when no round ran with DP): for summary.json."""
    dp = [r["dp"] for r in rows if r.get("round", 0) > 0 and r.get("dp")]
    if not dp:
        return None
    fractions = [d["clipped_fraction"] for d in dp if d.get("clipped_fraction") is not None]
    last = dp[-1]
    return {"clip": last["clip"], "noise_multiplier": last["noise_multiplier"], "epsilon": last["epsilon"],
            "delta": last["delta"], "accounting": last["accounting"], "rounds": len(dp),
            "population": last["population"], "weighting": last["weighting"],
            "mean_clipped_fraction": sum(fractions) / len(fractions) if fractions else None,
            "server_violations": sum(d["server_violations"] for d in dp)}


def dp_result_row(rows: Sequence[Mapping[str, Any]], variant: str = "") -> dict[str, Any]:
    """One row of WER against ε from a run's ``rounds.jsonl`` rows: ``{"variant", "epsilon", "delta",
    "noise_multiplier", "clip", "wer_user", "rounds"}`` (DP off: clip/z/ε None; z = 0: ε None = ∞)."""
    by_round = {r["round"]: r for r in rows}
    evals = [by_round[k]["eval"] for k in sorted(by_round) if by_round[k].get("eval")]
    s = summarize_dp(list(by_round.values())) or {}
    return {"variant": variant, "epsilon": s.get("epsilon"), "delta": s.get("delta"),
            "noise_multiplier": s.get("noise_multiplier"), "clip": s.get("clip"),
            "wer_user": evals[-1].get("wer_user") if evals else None, "rounds": max(by_round, default=0)}
