"""The paper's roles from a real corpus: server (proxy) speakers, users as clients, splits and new terms.

Paper §3 (DESIGN §2): the server pretrains the seed model on its own *proxy* data; the users are
federated clients whose on-device data differ from it. From a real corpus, one unit (a speaker, a
Common Voice ``client_id``, a manifest ``client``) is one client, and whole units are assigned::

    proxy units  -> proxy_train | proxy_dev | proxy_test        (speaker-disjoint)
    user units   -> seen:   user_train + user_heldout + user_heldout_dev   (utterance-level hold-out)
                    unseen: user_test | user_dev                 (client-disjoint, never train)

A source may fix a unit's role (``SourceUtterance.pool``: LibriSpeech subsets named as the server's or
the users'); everything else is drawn from `ImportConfig.seed`, so an import is deterministic.
New terms (paper §2.5, the words FL must learn) are a user's words that the server's text lacks.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from fedasr.importers.common import ImportConfig, SourceError

__all__ = ["POOLS", "IMPORT_SPLITS", "Kept", "assign_roles", "new_terms"]

# Splits an import writes, in order ("user_heldout_dev" and "user_dev" are the dev twins of the test splits).
IMPORT_SPLITS = ("proxy_train", "proxy_dev", "proxy_test", "user_train", "user_heldout", "user_heldout_dev",
                 "user_test", "user_dev")
POOLS = ("proxy", "user", "proxy_dev", "proxy_test", "user_dev", "user_test")  # roles a source may fix


@dataclass(frozen=True)
class Kept:
    """An utterance that passed the checks: normalised text, 16 kHz duration, manifest path."""

    id: str
    unit: str
    speaker: str
    voice: str
    text: str
    duration: float
    path: str  # relative to the corpus folder
    pool: str | None = None
    locale: str | None = None


def _rng(seed: int, *keys: object) -> random.Random:
    """A `random.Random` for one named choice (stable across processes, like `fedasr.seeding.derive_seed`)."""
    digest = hashlib.sha256("\x1f".join(map(str, ("import", seed, *keys))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _carve(units: list[str], sizes: Counter, share: float, rng: random.Random, keep: int = 1) -> tuple[list, list]:
    """Take whole units, in seeded order, until they hold ``share`` of the utterances of ``units``.

    At least one unit is taken when ``share > 0`` and more than ``keep`` units exist; at least ``keep``
    are left. Returns ``(taken, rest)``, each sorted.
    """
    order = sorted(units)
    rng.shuffle(order)
    if share <= 0 or len(order) <= keep:
        return [], sorted(order)
    target, got, taken = share * sum(sizes[u] for u in order), 0, []
    for u in order[: len(order) - keep]:
        if taken and got >= target:
            break
        taken.append(u)
        got += sizes[u]
    return sorted(taken), sorted(set(order) - set(taken))


def _pick_units(units: list[str], share: float, rng: random.Random, keep: int = 1) -> tuple[list, list]:
    """Take ``round(share * n)`` of ``units`` (at least one if ``share > 0``, leaving ``keep``): client shares."""
    order = sorted(units)
    rng.shuffle(order)
    n = min(max(1, round(share * len(order))), len(order) - keep) if share > 0 else 0
    return sorted(order[:max(n, 0)]), sorted(order[max(n, 0):])


def _unit_pools(utts: Sequence[Kept]) -> dict[str, str | None]:
    pools: dict[str, str | None] = {}
    for u in utts:
        if pools.setdefault(u.unit, u.pool) != u.pool:
            raise SourceError(f"speaker/client {u.unit!r} appears in two roles ({pools[u.unit]!r} and {u.pool!r}, "
                              f"e.g. utterance {u.id}): a unit must belong to one role")
    return pools


def assign_roles(utts: Sequence[Kept], cfg: ImportConfig) -> tuple[dict[str, list[Kept]], dict[str, bool]]:
    """Assign every utterance a split (see the module docstring).

    Returns ``({split: utterances sorted by (unit, id)}, {user client: seen})``.
    """
    pools = _unit_pools(utts)
    sizes = Counter(u.unit for u in utts)
    by_pool: dict[str | None, list[str]] = defaultdict(list)
    for unit, pool in pools.items():
        by_pool[pool].append(unit)
    # 1. units without a fixed role: the server takes proxy_fraction of the utterances, whole speakers
    proxy, user = _carve(by_pool.pop(None, []), sizes, cfg.proxy_fraction, _rng(cfg.seed, "proxy"))
    if cfg.proxy_fraction >= 1.0:
        proxy, user = proxy + user, []
    by_pool["proxy"] = sorted(by_pool.get("proxy", []) + proxy)
    by_pool["user"] = sorted(by_pool.get("user", []) + user)
    unit_split: dict[str, str] = {}
    # 2. proxy units: carve dev/test speakers unless the source names them
    rest = by_pool["proxy"]
    for split, share in (("proxy_test", cfg.proxy_test_fraction), ("proxy_dev", cfg.proxy_dev_fraction)):
        if not by_pool.get(split):
            taken, rest = _carve(rest, sizes, share, _rng(cfg.seed, split), keep=1)
            by_pool[split] = taken
    by_pool["proxy_train"] = rest
    # 3. user units: unseen clients (user_test, user_dev) unless the source names them, the rest train
    missing = [s for s in ("user_test", "user_dev") if not by_pool.get(s)]
    seen = by_pool["user"]
    if missing:
        unseen, seen = _pick_units(seen, cfg.unseen_fraction, _rng(cfg.seed, "unseen"))
        if len(missing) == 2:
            dev, test = _pick_units(unseen, cfg.unseen_dev_fraction, _rng(cfg.seed, "user_dev"))
            by_pool["user_dev"], by_pool["user_test"] = dev, test
        else:
            by_pool[missing[0]] = unseen
    for split in ("proxy_train", "proxy_dev", "proxy_test", "user_test", "user_dev"):
        unit_split.update({u: split for u in by_pool.get(split, [])})
    unit_split.update({u: "user_train" for u in seen})
    # 4. seen clients: hold out some utterances of each, then split the held-out set into test and dev
    out: dict[str, list[Kept]] = {s: [] for s in IMPORT_SPLITS}
    heldout: list[Kept] = []
    by_unit: dict[str, list[Kept]] = defaultdict(list)
    for u in utts:
        by_unit[u.unit].append(u)
    for unit in sorted(by_unit):
        mine = sorted(by_unit[unit], key=lambda u: u.id)
        if unit_split[unit] != "user_train":
            out[unit_split[unit]] += mine
            continue
        k = min(max(1, round(cfg.heldout_fraction * len(mine))), len(mine) - 1) if cfg.heldout_fraction > 0 else 0
        order = list(range(len(mine)))
        _rng(cfg.seed, "heldout", unit).shuffle(order)
        held = set(order[:k])
        heldout += [u for i, u in enumerate(mine) if i in held]
        out["user_train"] += [u for i, u in enumerate(mine) if i not in held]
    heldout.sort(key=lambda u: u.id)
    order = list(range(len(heldout)))
    _rng(cfg.seed, "heldout_dev").shuffle(order)
    dev = set(order[: round(cfg.heldout_dev_fraction * len(heldout))])
    out["user_heldout_dev"] = [u for i, u in enumerate(heldout) if i in dev]
    out["user_heldout"] = [u for i, u in enumerate(heldout) if i not in dev]
    for split in out:
        out[split].sort(key=lambda u: (u.unit, u.id))
    clients = {u: s == "user_train" for u, s in unit_split.items() if s.startswith("user")}
    return out, dict(sorted(clients.items()))


def new_terms(text: str, proxy_counts: Counter, max_count: int = 0) -> tuple[str, ...]:
    """The words of ``text`` that the server's text (``proxy_counts``: word -> count) has at most ``max_count``
    times, in order of first occurrence, each once (``Utterance.terms``)."""
    out: list[str] = []
    for w in text.split():
        if proxy_counts.get(w, 0) <= max_count and w not in out:
            out.append(w)
    return tuple(out)


def word_counts(texts: Iterable[str]) -> Counter:
    """Word -> number of occurrences in ``texts``."""
    return Counter(w for t in texts for w in t.split())
