"""Check a source's utterances and write them as a corpus folder, atomically.

`write_corpus` is the second half of every importer: text and audio checks (in worker processes), the
roles (`fedasr.importers.roles`), new terms, then ``manifests/<split>.jsonl``, ``clients.json`` and
``corpus.json`` in the layout `make data` writes (`fedasr.data`). Everything is written under a hidden
sibling folder ``.<name>.importing`` that is renamed to ``out`` only when complete, so an interrupted
import never leaves a folder that later steps would take as a corpus.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Sequence

import soundfile as sf

from fedasr.data import SkipReport, Utterance, write_manifest
from fedasr.importers.common import ImportConfig, Skip, SourceError, SourceUtterance, check_audio, safe_name, \
    transcript_normal_form
from fedasr.importers.roles import IMPORT_SPLITS, Kept, assign_roles, new_terms, word_counts

__all__ = ["IMPORTER_VERSION", "write_corpus", "check_one"]

IMPORTER_VERSION = "1.0"  # bump when the same source and config would give a different corpus


def check_one(job: tuple[SourceUtterance, str, str, dict]) -> tuple[str, dict]:
    """Check one utterance (text, then audio): ``("ok", Kept fields)`` or ``("skip", {reason, where})``.

    ``job`` = (utterance, temporary corpus folder, final corpus folder, config as a dict); a converted file
    goes to ``<tmp>/audio/<unit>/<id>.flac`` and the manifest path is relative to the final folder.
    """
    su, tmp, final, cfg_dict = job
    cfg = ImportConfig(**cfg_dict)
    try:
        text = transcript_normal_form(su.text)
        rel = Path("audio") / safe_name(su.unit) / f"{safe_name(su.id)}.flac"
        audio = check_audio(su.audio, Path(tmp) / rel, cfg)
    except Skip as s:
        return "skip", {"reason": s.reason, "where": f"{su.where or su.audio} ({s.detail})" if s.detail else su.where}
    path = str(rel) if audio.converted else os.path.relpath(Path(su.audio).resolve(), Path(final).resolve())
    return "ok", {"id": su.id, "unit": su.unit, "speaker": su.speaker, "voice": su.voice, "text": text,
                  "duration": audio.duration, "path": path, "pool": su.pool, "locale": su.locale,
                  "converted": audio.converted}


def _check_all(utts: Sequence[SourceUtterance], tmp: Path, final: Path, cfg: ImportConfig, workers: int,
               report: SkipReport) -> tuple[list[Kept], int]:
    """Run `check_one` on every utterance (in ``workers`` processes, order kept); returns kept + #converted."""
    jobs = [(u, str(tmp), str(final), asdict(cfg)) for u in utts]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap(check_one, jobs, chunksize=16))
    else:
        results = [check_one(j) for j in jobs]
    kept, converted = [], 0
    for status, d in results:
        if status == "skip":
            report.add(d["reason"], d["where"])
            continue
        converted += d.pop("converted")
        kept.append(Kept(**d))
    return kept, converted


def _dedupe(utts: Sequence[SourceUtterance], report: SkipReport) -> list[SourceUtterance]:
    seen, out = set(), []
    for u in utts:
        if u.id in seen:
            report.add("duplicate id", f"{u.where or u.audio} (id {u.id!r})")
            continue
        seen.add(u.id)
        out.append(u)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict:
    out = {p: metadata.version(p) for p in ("numpy", "scipy", "soundfile")}
    out["libsndfile"] = sf.__libsndfile_version__
    return out


def _write(tmp: Path, splits: dict[str, list[Kept]], seen: dict[str, bool], cfg: ImportConfig) -> dict:
    """Write the manifests and clients.json under ``tmp``; return the per-split and text statistics."""
    proxy_counts = word_counts(u.text for u in splits["proxy_train"])
    terms = {u.id: new_terms(u.text, proxy_counts, cfg.new_term_max_proxy_count)
             for s, us in splits.items() if s.startswith("user") for u in us}
    stats = {}
    for split in IMPORT_SPLITS:
        user = split.startswith("user")
        utts = [Utterance(u.id, u.path, u.text, u.duration, u.speaker, u.voice, u.unit if user else None, split,
                          "user" if user else "proxy", terms.get(u.id, ())) for u in splits[split]]
        write_manifest(tmp / "manifests" / f"{split}.jsonl", utts, tmp)
        stats[split] = {"utterances": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 4),
                        "speakers": len({u.speaker for u in utts}), "clients": len({u.client for u in utts} - {None})}
    users = [u for s in IMPORT_SPLITS if s.startswith("user") for u in splits[s]]
    by_client: dict[str, list[tuple[str, Kept]]] = {}
    for s in IMPORT_SPLITS:
        for u in splits[s] if s.startswith("user") else ():
            by_client.setdefault(u.unit, []).append((s, u))
    clients = []
    for unit, is_seen in seen.items():
        mine = [u for _, u in by_client.get(unit, [])]
        if not mine:
            continue
        clients.append({"id": unit, "seen": is_seen, "speaker": mine[0].speaker, "voice": mine[0].voice,
                        "locale": mine[0].locale, "channel": None,  # a real recording's channel is not known
                        "new_terms": sorted({w for u in mine for w in terms[u.id]}), "utterances": len(mine),
                        "splits": dict(Counter(s for s, _ in by_client[unit]))})
    (tmp / "clients.json").write_text(json.dumps(clients, indent=1, sort_keys=True) + "\n")
    user_words = [w for u in users for w in u.text.split()]
    text = {"proxy_train_word_types": len(proxy_counts), "user_word_types": len(set(user_words)),
            "user_oov_rate_vs_proxy_train": round(sum(w not in proxy_counts for w in user_words)
                                                  / max(1, len(user_words)), 4),
            "user_utterances_with_terms": round(sum(bool(terms[u.id]) for u in users) / max(1, len(users)), 4)}
    return {"splits": stats, "text": text,
            "clients": {"seen": sum(c["seen"] for c in clients), "unseen": sum(not c["seen"] for c in clients)}}


def _prepare(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SourceError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    tmp = out.parent / f".{out.name}.importing"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted import left behind
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the complete ``tmp`` (the old corpus is removed only once the new one is in place)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_corpus(utts: Sequence[SourceUtterance], out: str | Path, cfg: ImportConfig, source: dict,
                 report: SkipReport | None = None, workers: int = 1, overwrite: bool = False) -> dict:
    """Check ``utts``, assign roles and write the corpus folder ``out``; return its ``corpus.json`` record.

    Args:
        utts: the source's utterances (`SourceUtterance`), in the source's order.
        out: the corpus folder to create (replaced only with ``overwrite``).
        cfg: roles, fractions and checks.
        source: ``{"kind", "path", ...}`` about the source (recorded under ``corpus.json``'s ``source``).
        report: skips the source reader already counted (missing transcripts, malformed rows).
        workers: processes decoding audio (1 = in this process).
    """
    out = Path(out).absolute()
    report = report if report is not None else SkipReport()
    tmp = _prepare(out, overwrite)
    try:
        n_in = len(utts) + report.total
        kept, converted = _check_all(_dedupe(utts, report), tmp, out, cfg, workers, report)
        if not kept:
            raise SourceError(f"{source['path']}: no usable utterance ({report.summary()})")
        splits, seen = assign_roles(kept, cfg)
        if not splits["proxy_train"] and cfg.proxy_fraction > 0:
            raise SourceError(f"{source['path']}: no proxy (server) speaker: {len(seen)} user clients, "
                              "check the subsets or --proxy-fraction")
        if not splits["user_train"] and cfg.proxy_fraction < 1:
            raise SourceError(f"{source['path']}: no seen user client: need at least 2 user speakers, "
                              "check the subsets or --proxy-fraction")
        record = {"importer_version": IMPORTER_VERSION, "profile": out.name, "seed": cfg.seed,
                  "config": asdict(cfg), **_write(tmp, splits, seen, cfg),
                  "source": {**source, "utterances_in": n_in, "utterances_kept": len(kept),
                             "skipped": dict(sorted(report.counts.items())),
                             "skipped_examples": dict(sorted(report.examples.items()))},
                  "audio": {"in_place": len(kept) - converted, "converted_to_flac_16k": converted},
                  "python_packages": _versions()}
        record["sha256"] = {f"manifests/{s}.jsonl": _sha256(tmp / "manifests" / f"{s}.jsonl") for s in IMPORT_SPLITS} \
            | {"clients.json": _sha256(tmp / "clients.json")}
        (tmp / "corpus.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
