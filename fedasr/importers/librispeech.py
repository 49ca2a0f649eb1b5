"""LibriSpeech: read ``<subset>/<speaker>/<chapter>/`` folders (FLAC + ``<speaker>-<chapter>.trans.txt``).

The standard layout (Panayotov et al. 2015, openslr.org/12) is::

    LibriSpeech/train-clean-100/103/1240/103-1240-0000.flac
    LibriSpeech/train-clean-100/103/1240/103-1240.trans.txt     "103-1240-0000 CHAPTER ONE MISSUS RACHEL ..."

``src`` may be the tree's root (holding subset folders, or a ``LibriSpeech/`` folder that does) or one
subset folder. Speakers are disjoint across the standard subsets, so a subset can be given a role whole:
``roles={"proxy": ["train-clean-100"], "user": ["train-other-500"], "proxy_test": ["test-clean"], ...}``;
subsets named nowhere take no part when any role is given, and with no roles every subset found is one
pool split at speaker level (`fedasr.importers.roles`). A chapter folder with FLAC files but no
transcript file fails naming the file it expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from fedasr.data import SkipReport
from fedasr.importers.common import ImportConfig, SourceError, SourceUtterance
from fedasr.importers.roles import POOLS
from fedasr.importers.writer import write_corpus

__all__ = ["find_subsets", "read_librispeech", "import_librispeech"]


def _is_speaker_dir(p: Path) -> bool:
    return p.is_dir() and p.name.isdigit()


def find_subsets(src: str | Path) -> dict[str, Path]:
    """Subset name -> folder under ``src`` (``src`` itself if it is one subset folder)."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"{src}: not a folder (expected a LibriSpeech tree or one subset folder)")
    if (src / "LibriSpeech").is_dir() and not any(_is_speaker_dir(p) for p in src.iterdir()):
        src = src / "LibriSpeech"
    children = sorted(p for p in src.iterdir() if p.is_dir())
    if any(_is_speaker_dir(p) for p in children):
        return {src.name: src}
    subsets = {p.name: p for p in children if any(_is_speaker_dir(q) for q in p.iterdir())}
    if not subsets:
        raise SourceError(f"{src}: no LibriSpeech subset found (expected <subset>/<speaker>/<chapter>/ folders "
                          "such as train-clean-100/103/1240/, or <speaker>/<chapter>/ folders)")
    return subsets


def _read_chapter(chapter: Path, speaker: str, subset: str, pool: str | None,
                  report: SkipReport) -> list[SourceUtterance]:
    trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
    flacs = {p.stem: p for p in chapter.glob("*.flac")}
    if not trans.exists():
        if not flacs:
            return []
        raise SourceError(f"{trans}: transcript file missing (expected '<utterance-id> <TEXT>' lines for the "
                          f"{len(flacs)} FLAC files in {chapter})")
    out, listed = [], set()
    for i, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        uid, _, text = line.strip().partition(" ")
        listed.add(uid)
        out.append(SourceUtterance(id=uid, audio=(chapter / f"{uid}.flac").absolute(), text=text,
                                   unit=f"ls{speaker}", speaker=f"librispeech:{speaker}", voice="real:librispeech",
                                   pool=pool, where=f"{trans}:{i}"))
    for stem in sorted(set(flacs) - listed):
        report.add("no transcript", f"{flacs[stem]} (not listed in {trans.name})")
    return out


def read_librispeech(src: str | Path, roles: Mapping[str, Sequence[str]] | None = None,
                     report: SkipReport | None = None) -> tuple[list[SourceUtterance], dict[str, str | None]]:
    """Read the utterances of the subsets under ``src`` that ``roles`` uses (all, without roles).

    Args:
        src: the tree's root or one subset folder.
        roles: pool (`fedasr.importers.roles.POOLS`) -> subset names; subsets not named are left out.
        report: where transcript-less FLAC files are counted (``"no transcript"``).

    Returns:
        ``(utterances, {subset: pool})``.
    """
    subsets = find_subsets(src)
    report = report if report is not None else SkipReport()
    roles = {k: list(v) for k, v in (roles or {}).items() if v}
    unknown_pools = sorted(set(roles) - set(POOLS))
    if unknown_pools:
        raise ValueError(f"unknown LibriSpeech role(s) {unknown_pools}; expected some of {list(POOLS)}")
    use: dict[str, str | None] = {}
    for pool, names in roles.items():
        for name in names:
            if name not in subsets:
                raise SourceError(f"{src}: subset {name!r} (for {pool}) not found; found {sorted(subsets)}")
            if use.setdefault(name, pool) != pool:
                raise SourceError(f"subset {name!r} is given two roles: {use[name]} and {pool}")
    if not roles:
        use = {name: None for name in subsets}
    utts: list[SourceUtterance] = []
    for name in sorted(use):
        for spk in sorted((p for p in subsets[name].iterdir() if _is_speaker_dir(p)), key=lambda p: int(p.name)):
            for chapter in sorted((p for p in spk.iterdir() if p.is_dir()), key=lambda p: p.name):
                utts += _read_chapter(chapter, spk.name, name, use[name], report)
    return utts, use


def import_librispeech(src: str | Path, out: str | Path, cfg: ImportConfig | None = None,
                       roles: Mapping[str, Sequence[str]] | None = None, workers: int = 1,
                       overwrite: bool = False) -> dict:
    """Import a LibriSpeech tree as a corpus folder ``out``; return its ``corpus.json`` record.

    ``roles`` maps pools to subsets (see the module docstring); without roles, one subset (or all found)
    is split at speaker level by ``cfg``'s fractions.
    """
    cfg = cfg or ImportConfig()
    report = SkipReport()
    utts, use = read_librispeech(src, roles, report)
    source = {"kind": "librispeech", "path": str(Path(src).absolute()),
              "subsets": {name: pool or "speaker-level split" for name, pool in sorted(use.items())}}
    return write_corpus(utts, out, cfg, source, report=report, workers=workers, overwrite=overwrite)
