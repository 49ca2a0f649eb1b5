"""Secure aggregation by pairwise additive masking (``[fed.secagg]``), with a modulus matched to the int8/int4 codecs.

The core of SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
§4 "masking with one-time pads" + key agreement), in our Message-API round loop. Flower 1.42's SecAgg+
(``secaggplus_mod``, ``SecAggPlusWorkflow``) runs only on the legacy NumPy-client path, masks int64 values (8 bytes
per parameter, undoing transport compression, paper §2.3) and seeds its masks from a 32-bit fold of the shared key,
so we do not use it. One round (``strategies.FedAsrStrategy`` calls `SecAggServer`; the ClientApp calls the
``*_reply`` functions)::

    setup (TRAIN, carries the download)   client i computes x_i (gradient / delta) once and keeps it in its node's
                                          context.state; replies: X25519 public key, per-variable max|x_i| and
                                          ‖x_i‖₂, and the usual metrics (num-examples, loss, WCA statistics)
    server                                drops non-finite / misshapen / norm-outlier clients (it will never see
                                          x_i again), weights w_i = a_i / Σ a (aggregation.py), common grid per
                                          variable s_k = max_i w_i·max|x_ik| / h  (h = 127 int8, 7 int4)
    masked (TRAIN, no arrays)             q_i = SR(w_i·x_i / s) + h ∈ [0, 2h]    (stochastic rounding, client seed)
                                          y_i = q_i + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)   mod 2^m
                                          s_ij = HKDF-SHA256(X25519(sk_i, pk_j), info = round, pair); PRG = AES-256-CTR
    recovery (QUERY, only on dropouts)    each survivor i reveals s_ij for every client j lost after setup; the
                                          server removes those masks (repeated if a survivor is lost meanwhile)
    server                                Σ_i y_i mod 2^m = Σ_i q_i exactly (masks cancel), then
                                          G = s·(Σ q_i − n·h) / Σ_{survivors} w_i  → server optimizer (+ Mixed FL)

The modulus: 2h·K < 2^m for the configured cohort K (`config.SecAggConfig.modulus`): int4 codes (0..14) travel in
uint8 (m = 8, up to 18 clients), int8 codes (0..254) in uint16 (m = 16, up to 258 clients). Masks cancel exactly,
so the result does not depend on the keys: keys from os.urandom still give bitwise-reproducible runs, equal to the
same run with ``masking = false`` (the codes sent in the clear). Bytes (round record): ``bytes_up`` counts the
masked codes (m bits per parameter, no scales: the grid is common), ``secagg.bytes`` the extra exchange (32-byte
keys, fp32 maxima/norm/grid/weight, 32-byte revealed seeds). The update waits in the node's Context between the
phases (Flower's engines keep it; a node that lost it declines phase 2 and counts as a dropout).

What is a security claim here, and what is not:

* Claimed (semi-honest model): an honest-but-curious server that follows the protocol, facing clients that do not
  collude with it, learns from the masked uploads only their sum over at least ``min-cohort`` clients; a masked
  upload alone is uniform modulo 2^m. Pair seeds are 256-bit HKDF outputs of X25519 and keyed AES-CTR.
* Not claimed: a malicious server. There is no double masking (Bonawitz's self-mask b_i with Shamir shares), so a
  server that lies that client j dropped after receiving y_j obtains every s_jk in recovery and unmasks y_j.
  Public keys are not authenticated (a server could substitute its own); a client colluding with the server removes
  its own masks, so K − 1 colluders recover the remaining client's update.
* Not hidden: phase 1 reveals per client, in the clear, the per-variable maxima max|x_ik| and the norm ‖x_i‖₂, the
  weight inputs (num-examples, loss and the WCA statistics, see `privacy`'s docstring on the histogram), and who
  took part; the aggregate itself is revealed (no DP: ``dp.enabled`` is rejected with secagg).
* No robustness to malicious clients beyond the range clip: a client can send any value mod 2^m (or lie in phase 1)
  and shift the sum; the server can no longer inspect individual updates.
* This is a simulation: private keys stay in the node's Context and are never put in a message, but on the
  Simulation Engine that Context lives in the server's process; nothing here is a security evaluation or audited code.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from logging import WARNING
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore import log

from fedasr import refinement
from fedasr.compression import CODECS
from fedasr.federated.aggregation import norm_outliers_of
from fedasr.federated.client_update import Update
from fedasr.federated.config import FedConfig, fed_to_flat
from fedasr.seeding import derive_seed

__all__ = ["MASKED", "RECOVER", "SETUP", "STAGE", "SecAggServer", "common_grid", "decode_sum", "keypair", "mask_codes",
           "masked_reply", "pair_seed", "prg", "quantize_shifted", "recovery_reply", "setup_reply", "unmask_sum"]

STAGE = "secagg-stage"  # TRAIN config key: SETUP (phase 1) or MASKED (phase 2)
SETUP, MASKED = "setup", "masked"
RECOVER = "secagg-recover"  # QUERY action of the recovery exchange
KEY_BYTES, FLOAT_BYTES = 32, 4  # an X25519 public key / a pair seed; an fp32 value
_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


# --- the maths: plain functions ------------------------------------------------------------------------------------

def keypair(source: str = "urandom", *parts: Any) -> tuple[bytes, bytes]:
    """A fresh X25519 ``(private, public)`` raw key pair: from os.urandom, or ("derived", NOT secret) from ``parts``."""
    if source == "derived":
        sk = X25519PrivateKey.from_private_bytes(hashlib.sha256(repr(("secagg-key", *parts)).encode()).digest())
    else:
        sk = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return (sk.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
            sk.public_key().public_bytes(raw, serialization.PublicFormat.Raw))


def pair_seed(private: bytes, peer_public: bytes, server_round: int, a: str, b: str) -> bytes:
    """The 256-bit seed ``s_ab`` two clients share: HKDF-SHA256 over X25519, bound to the round and the pair."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    lo, hi = sorted((a, b))
    info = json.dumps(["fedasr-secagg", int(server_round), lo, hi]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def prg(seed: bytes, n: int, dtype: Any) -> np.ndarray:
    """``n`` uniform values of ``dtype``: AES-256-CTR keystream keyed by ``seed`` (zero nonce: one key, one stream)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(n * np.dtype(dtype).itemsize)) + enc.finalize(), dtype=dtype)


def common_grid(maxima: Sequence[Sequence[float]], weights: Sequence[float], code_bits: int) -> list[float]:
    """Per-variable fp32 scales ``s_k = max_i w_i·max|x_ik| / h`` (1 where all are 0) of the cohort's common grid."""
    half = (1 << (code_bits - 1)) - 1
    top = np.max(np.asarray(maxima, dtype=np.float64) * np.asarray(weights, dtype=np.float64)[:, None], axis=0)
    return [float(np.float32(m / half)) if m > 0 else 1.0 for m in top]


def quantize_shifted(arrays: Mapping[str, torch.Tensor], names: Sequence[str], scales: Sequence[float], weight: float,
                     code_bits: int, generator: torch.Generator) -> np.ndarray:
    """Flat int64 codes ``SR(w·x / s) + h ∈ [0, 2h]`` of ``names`` in order (stochastic rounding: unbiased)."""
    half, out = (1 << (code_bits - 1)) - 1, []
    for name, s in zip(names, scales):
        v = arrays[name].detach().reshape(-1).to(torch.float32) * weight / s
        q = torch.floor(v + torch.rand(v.shape, generator=generator)).clamp_(-half, half) + half
        out.append(q.to(torch.int64))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def mask_codes(codes: np.ndarray, me: str, seeds: Mapping[str, bytes], modulus_bits: int) -> np.ndarray:
    """``y = q + Σ_{j>me} PRG(s_j) − Σ_{j<me} PRG(s_j)`` modulo ``2^m`` (unsigned numpy arithmetic wraps)."""
    dtype = _DTYPES[modulus_bits]
    y = codes.astype(dtype)
    for peer in sorted(seeds):
        m = prg(seeds[peer], y.size, dtype)
        if me < peer:
            y += m
        else:
            y -= m
    return y


def unmask_sum(masked: Iterable[np.ndarray], revealed: Mapping[tuple[str, str], bytes], modulus_bits: int) -> np.ndarray:
    """``Σ y_i`` mod 2^m with the masks of revealed pairs ``(survivor i, dropped j) → s_ij`` removed."""
    masked = list(masked)
    total = masked[0].copy()
    for y in masked[1:]:
        total += y  # wraps modulo 2^m
    dtype = _DTYPES[modulus_bits]
    for (i, j), seed in sorted(revealed.items()):
        m = prg(seed, total.size, dtype)
        total += -m if i < j else m  # i added +PRG(s_ij) for a higher id j and −PRG(s_ij) for a lower one
    return total


def decode_sum(total: np.ndarray, count: int, names: Sequence[str], shapes: Mapping[str, Sequence[int]],
               scales: Sequence[float], weight_sum: float, code_bits: int) -> dict[str, torch.Tensor]:
    """The weighted mean ``s·(Σ q_i − n·h) / Σ w_i`` per variable (float32) from the unmasked sum of codes."""
    half = (1 << (code_bits - 1)) - 1
    centred = total.astype(np.int64) - count * half
    out, at = {}, 0
    for name, s in zip(names, scales):
        n = math.prod(shapes[name])
        vals = centred[at:at + n].astype(np.float64) * (s / weight_sum)
        out[name] = torch.from_numpy(vals.astype(np.float32)).reshape(tuple(shapes[name]))
        at += n
    return out


# --- the client's side (called by client_app) ----------------------------------------------------------------------

def setup_reply(msg: Message, context: Context, update: Update, metrics: MetricRecord, client_seed: int,
                server_round: int, fed: FedConfig) -> Message:
    """Phase 1: keep the update and a fresh key pair in the node's state; reply with the public key and maxima."""
    cid = update.client_id
    for key in [k for k in context.state if k.startswith("secagg:key:")]:  # earlier rounds' leftovers (a node
        if int(context.state[key]["round"]) != server_round:  # may hold several clients of this round)
            context.state.pop(key)
            context.state.pop(key.replace(":key:", ":update:"), None)
    private, public = keypair(fed.secagg.key_source, fed.seed, server_round, cid)
    names = sorted(update.arrays)
    arrays = {n: update.arrays[n].detach().to(torch.float32).contiguous() for n in names}
    context.state[f"secagg:update:{cid}"] = ArrayRecord(arrays)
    context.state[f"secagg:key:{cid}"] = ConfigRecord({"round": server_round, "private": private})
    maxima = [float(a.abs().max()) if a.numel() else 0.0 for a in arrays.values()]
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(a)) ** 2 for a in arrays.values()))
    shapes = json.dumps({n: list(a.shape) for n, a in arrays.items()})  # the architecture: no user information
    rec = ConfigRecord({"public-key": public, "maxima": maxima, "norm": norm, "shapes": shapes})
    return Message(RecordDict({"metrics": metrics, "secagg": rec}), reply_to=msg)


def masked_reply(msg: Message, context: Context, fed: FedConfig) -> Message:
    """Phase 2: quantize the cached update onto the common grid and add the pairwise masks."""
    conf = msg.content["config"]
    cid, server_round = str(conf["client-id"]), int(conf["server-round"])
    cached, key = context.state.get(f"secagg:update:{cid}"), context.state.get(f"secagg:key:{cid}")
    if cached is None or key is None or int(key["round"]) != server_round:
        raise RuntimeError(f"secagg: no update of round {server_round} cached for {cid} (node state lost)")
    arrays = cached.to_torch_state_dict()
    del context.state[f"secagg:update:{cid}"]  # the private key stays for a possible recovery exchange
    names, bits = sorted(arrays), CODECS[fed.transport.upload.name].bits
    gen = torch.Generator().manual_seed(derive_seed("upload", int(conf["client-seed"])))
    codes = quantize_shifted(arrays, names, list(conf["secagg-scales"]), float(conf["secagg-weight"]), bits, gen)
    mbits = fed.secagg.modulus(bits, fed.clients_per_round)
    seeds = {}
    if fed.secagg.masking:
        seeds = {p: pair_seed(bytes(key["private"]), bytes(k), server_round, cid, p)
                 for p, k in zip(conf["secagg-cohort"], conf["secagg-keys"]) if p != cid}
    y = mask_codes(codes, cid, seeds, mbits)
    out, at = {}, 0
    for n in names:
        out[n] = Array(y[at:at + arrays[n].numel()].reshape(tuple(arrays[n].shape)))
        at += arrays[n].numel()
    return Message(RecordDict({"arrays": ArrayRecord(out)}), reply_to=msg)


def recovery_reply(msg: Message, context: Context) -> Message:
    """Recovery: reveal this client's pair seeds with the clients the server reports lost after setup."""
    conf = msg.content["config"]
    cid, server_round = str(conf["client-id"]), int(conf["server-round"])
    key = context.state.get(f"secagg:key:{cid}")
    if key is None or int(key["round"]) != server_round:
        raise RuntimeError(f"secagg: no key of round {server_round} for {cid}")
    seeds = [pair_seed(bytes(key["private"]), bytes(k), server_round, cid, j)
             for j, k in zip(conf["secagg-dropped"], conf["secagg-keys"])]
    return Message(RecordDict({"secagg": ConfigRecord({"seeds": seeds})}), reply_to=msg)


# --- the server's side (called by strategies.FedAsrStrategy) -------------------------------------------------------

def _setup_reason(rec: Any, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a phase-1 reply cannot join the cohort (the server's last look at this client), or None."""
    sent = {k: tuple(v) for k, v in json.loads(str(rec["shapes"])).items()}
    for name, shape in sent.items():
        if name not in shapes:
            return f"unknown-variable:{name}"
        if shape != shapes[name]:
            return f"shape-mismatch:{name}"
    if set(sent) != set(shapes):
        return f"missing-variables:{len(set(shapes) - set(sent))}"
    if len(bytes(rec["public-key"])) != KEY_BYTES or len(list(rec["maxima"])) != len(shapes):
        return "malformed-reply: secagg setup"
    for name, m in zip(sorted(sent), list(rec["maxima"])):
        if not math.isfinite(float(m)):
            return f"non-finite:{name}"
    return None if math.isfinite(float(rec["norm"])) else "non-finite:norm"


class SecAggServer:
    """The server's side of one secure-aggregation round for `strategies.FedAsrStrategy` (module docstring)."""

    def __init__(self, fed: FedConfig, shapes: Mapping[str, Sequence[int]]) -> None:
        self.fed, self.cfg = fed, fed.secagg
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.names = sorted(self.shapes)
        self.bits = CODECS[fed.transport.upload.name].bits
        self.mbits = self.cfg.modulus(self.bits, fed.clients_per_round)
        self.st: dict[str, Any] = {}
        self.grid: Any = None

    def setup(self, strategy: Any, grid: Any, server_round: int) -> list[tuple[Message, str]]:
        """Phase 1 over ``strategy._sent``; return the phase-2 messages (none when the round must be skipped)."""
        self.grid, fed = grid, self.fed
        for m, _ in strategy._sent:
            m.content["config"][STAGE] = SETUP
        replies = grid.send_and_receive([m for m, _ in strategy._sent], timeout=fed.round_timeout_s)
        by_msg = {m.metadata.message_id: cid for m, cid in strategy._sent}
        nodes = {cid: m.metadata.dst_node_id for m, cid in strategy._sent}
        st = self.st = {"round": server_round, "failed": {}, "info": {}, "stubs": {}, "nodes": nodes,
                        "bytes": {"setup_up": 0, "masked_down": 0, "recovery_down": 0, "recovery_up": 0}}
        for reply in replies:
            cid = by_msg.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in st["stubs"] or cid in st["failed"]:
                continue
            self._parse_setup(reply, cid)
        for _, cid in strategy._sent:
            if cid not in st["stubs"] and cid not in st["failed"]:
                st["failed"][cid] = "timeout"
        for cid, why in norm_outliers_of({c: i["norm"] for c, i in st["info"].items()},
                                       fed.faults.max_norm_ratio).items():
            st["failed"][cid] = why
            del st["stubs"][cid]
        cohort = sorted(st["stubs"])
        need = max(fed.min_successful_clients, self.cfg.min_cohort)
        if len(cohort) < need:
            st["skip"] = f"secagg setup: {len(cohort)} usable client(s) < {need} (min-successful-clients, min-cohort)"
            return []
        raw = strategy.round_weights([st["stubs"][c] for c in cohort])
        if not sum(raw) > 0:
            st["skip"] = "secagg setup: the cohort's weights sum to 0"
            return []
        w = [a / sum(raw) for a in raw]
        scales = common_grid([st["info"][c]["maxima"] for c in cohort], w, self.bits)
        keys = [st["info"][c]["public-key"] for c in cohort]
        base = {**fed_to_flat(fed), "server-round": server_round, STAGE: MASKED, "secagg-cohort": cohort,
                "secagg-keys": keys, "secagg-scales": scales}
        st.update(cohort=cohort, raw_weights=dict(zip(cohort, raw)), weights=dict(zip(cohort, w)), scales=scales,
                  keys=dict(zip(cohort, keys)))
        st["bytes"]["masked_down"] = len(cohort) * (KEY_BYTES * len(cohort) + FLOAT_BYTES * (len(scales) + 1))
        out = []
        for cid, wi in zip(cohort, w):
            conf = ConfigRecord({**base, "client-id": cid, "secagg-weight": wi,
                                 "client-seed": derive_seed("client", fed.seed, server_round, cid)})
            out.append((Message(RecordDict({"config": conf}), dst_node_id=nodes[cid], message_type=MessageType.TRAIN,
                                group_id=str(server_round)), cid))
        return out

    def _parse_setup(self, reply: Message, cid: str) -> None:
        st = self.st
        if reply.has_error():
            st["failed"][cid] = f"error: {reply.error.reason}"[:300]
            return
        try:
            rec, metrics = reply.content["secagg"], dict(reply.content["metrics"])
            reason = _setup_reason(rec, self.shapes)
            n = int(metrics.pop("num-examples"))
            reason = reason or (None if n > 0 else "no-examples")
            if reason is None and self.fed.weighting != "examples":
                refinement.ClientStats.from_metrics(metrics, self.fed.wca_buckets)
        except Exception as e:  # noqa: BLE001 — a malformed reply must not end the round
            reason = f"malformed-reply: {type(e).__name__}: {e}"[:300]
        st["bytes"]["setup_up"] += KEY_BYTES + FLOAT_BYTES * (len(self.shapes) + 1)
        if reason is not None:
            st["failed"][cid] = reason
            return
        st["info"][cid] = {"public-key": bytes(rec["public-key"]), "maxima": [float(m) for m in rec["maxima"]],
                           "norm": float(rec["norm"])}
        st["stubs"][cid] = Update({}, n, metrics, cid)

    def aggregate(self, strategy: Any, server_round: int,
                  replies: Iterable[Message]) -> tuple[dict[str, torch.Tensor] | None, list[Update]]:
        """Phase 2 (+ recovery): the cohort's weighted mean from the masked sum, or None (round skipped, recorded)."""
        st, failed, masked, bytes_up = self.st, dict(self.st["failed"]), {}, 0
        by_msg = {m.metadata.message_id: cid for m, cid in strategy._sent}
        for reply in replies:
            cid = by_msg.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in masked or cid in failed:
                continue
            y, reason, nbytes = self._parse_masked(reply)
            bytes_up += nbytes
            if reason is None:
                masked[cid] = y
            else:
                failed[cid] = reason
        cohort = st.get("cohort", [])
        for cid in cohort:
            if cid not in masked and cid not in failed:
                failed[cid] = "timeout"
        survivors, dropped = set(masked), {c for c in cohort if c not in masked}
        lost = sorted(dropped)
        revealed, why = self._recover(server_round, survivors, dropped, failed) if "skip" not in st else ({}, None)
        need = max(self.fed.min_successful_clients, self.cfg.min_cohort)
        skip = st.get("skip") or why or (f"secagg: {len(survivors)} surviving client(s) < {need}"
                                         if len(survivors) < need else None)
        ok = sorted(survivors) if skip is None else []
        compute = {c: s.metrics["compute-s"] for c, s in st["stubs"].items() if "compute-s" in s.metrics}
        strategy.record.update(succeeded=ok, failed=failed, num_succeeded=len(ok), num_failed=len(failed),
                               bytes_up=bytes_up, client_compute_s=compute,
                               slowest_client_s=max(compute.values(), default=None),
                               secagg={"code_bits": self.bits, "modulus_bits": self.mbits,
                                       "masking": self.cfg.masking, "cohort": len(cohort), "survivors": len(ok),
                                       "dropped_after_setup": lost, "revealed_pairs": len(revealed),
                                       "bytes": dict(st["bytes"]),
                                       "overhead_up": st["bytes"]["setup_up"] + st["bytes"]["recovery_up"]})
        for cid, why_failed in failed.items():
            log(WARNING, "round %d: client %s excluded (%s)", server_round, cid, why_failed)
        if skip is not None:
            strategy.record.update(status="skipped", skip_reason=skip)
            log(WARNING, "round %d skipped: %s", server_round, skip)
            return None, []
        total = unmask_sum((masked[c] for c in ok), {p: s for p, s in revealed.items() if p[0] in survivors},
                           self.mbits)
        wsum = sum(st["weights"][c] for c in ok)
        strategy.record["weights"] = {c: st["raw_weights"][c] for c in ok}
        return decode_sum(total, len(ok), self.names, self.shapes, st["scales"], wsum, self.bits), \
            [st["stubs"][c] for c in ok]

    def _parse_masked(self, reply: Message) -> tuple[np.ndarray | None, str | None, int]:
        """``(flat masked codes, reason to drop or None, bytes)`` of one phase-2 reply."""
        if reply.has_error():
            return None, f"error: {reply.error.reason}"[:300], 0
        try:
            arrays = reply.content["arrays"]
            nbytes = sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in arrays.values())
            if sorted(arrays) != self.names:
                return None, f"missing-variables:{len(set(self.names) - set(arrays))}", nbytes
            flat = []
            for n in self.names:
                a = arrays[n].numpy()
                if tuple(a.shape) != self.shapes[n]:
                    return None, f"shape-mismatch:{n}", nbytes
                if a.dtype != _DTYPES[self.mbits]:
                    return None, f"bad-dtype:{n}", nbytes
                flat.append(a.reshape(-1))
        except Exception as e:  # noqa: BLE001
            return None, f"malformed-reply: {type(e).__name__}: {e}"[:300], 0
        return np.concatenate(flat), None, nbytes

    def _recover(self, server_round: int, survivors: set[str], dropped: set[str],
                 failed: dict[str, str]) -> tuple[dict[tuple[str, str], bytes], str | None]:
        """Collect ``s_ij`` (survivor i, dropped j) until every remaining mask is known; update the sets in place."""
        revealed: dict[tuple[str, str], bytes] = {}
        if not dropped or not self.cfg.masking:
            return revealed, None
        if not self.cfg.recovery:
            return revealed, f"secagg: {len(dropped)} client(s) lost after setup and recovery is off"
        st, b = self.st, self.st["bytes"]
        for _ in range(3):
            need = {i: [j for j in sorted(dropped) if (i, j) not in revealed] for i in sorted(survivors)}
            need = {i: js for i, js in need.items() if js}
            if not need or len(survivors) < self.cfg.min_cohort:
                return revealed, None
            sent = []
            for i, js in need.items():
                conf = ConfigRecord({"action": RECOVER, "client-id": i, "server-round": server_round,
                                     "secagg-dropped": js, "secagg-keys": [st["keys"][j] for j in js]})
                sent.append((Message(RecordDict({"config": conf}), dst_node_id=st["nodes"][i],
                                     message_type=MessageType.QUERY, group_id=str(server_round)), i))
                b["recovery_down"] += KEY_BYTES * len(js)
            replies = self.grid.send_and_receive([m for m, _ in sent], timeout=self.fed.round_timeout_s)
            by_msg, answered = {m.metadata.message_id: i for m, i in sent}, set()
            for reply in replies:
                i = by_msg.get(reply.metadata.reply_to_message_id)
                if i is None or i in answered or reply.has_error():
                    continue
                seeds = [bytes(s) for s in reply.content["secagg"]["seeds"]]
                if len(seeds) == len(need[i]) and all(len(s) == KEY_BYTES for s in seeds):
                    revealed.update({(i, j): s for j, s in zip(need[i], seeds)})
                    b["recovery_up"] += KEY_BYTES * len(seeds)
                    answered.add(i)
            for i in need:
                if i not in answered:  # lost during recovery: its own masks must now be removed too
                    survivors.discard(i)
                    dropped.add(i)
                    failed[i] = "secagg-recovery: no answer"
        return revealed, "secagg: recovery did not converge in 3 exchanges"
