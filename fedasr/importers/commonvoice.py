"""Common Voice: read a release's ``validated.tsv`` (or ``train.tsv``) and its ``clips/`` folder.

A Common Voice language folder (commonvoice.mozilla.org, e.g. ``cv-corpus-17.0/en/``) holds tab-separated
files with one clip per row (``client_id``, ``path``, ``sentence``, and ``locale``, ``up_votes``, ...)
and ``clips/<path>`` in MP3 (libsndfile ≥ 1.1 decodes it). One ``client_id`` is one person, hence one
client. Rows are read without quote processing (sentences contain ``"``), as the release writes them.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from fedasr.data import SkipReport
from fedasr.importers.common import ImportConfig, SourceError, SourceUtterance
from fedasr.importers.writer import write_corpus

__all__ = ["REQUIRED_COLUMNS", "read_commonvoice", "import_commonvoice"]

REQUIRED_COLUMNS = ("client_id", "path", "sentence")
_ID_CHARS = 12  # client ids are 128 hex digits; 12 (48 bits) name a client, longer where two would collide


def _find_tsv(src: Path, tsv: str | None) -> Path:
    if tsv:
        path = Path(tsv) if Path(tsv).is_absolute() else src / tsv
        if not path.exists():
            raise SourceError(f"{path}: tsv file not found")
        return path
    for name in ("validated.tsv", "train.tsv"):
        if (src / name).exists():
            return src / name
    raise SourceError(f"{src}: no validated.tsv or train.tsv (expected a Common Voice language folder with a "
                      "tab-separated file of client_id, path, sentence and a clips/ folder)")


def _short_ids(client_ids: set[str]) -> dict[str, str]:
    n = _ID_CHARS
    while len({c[:n] for c in client_ids}) < len(client_ids):
        n *= 2
    return {c: c[:n] for c in client_ids}


def read_commonvoice(src: str | Path, tsv: str | None = None,
                     report: SkipReport | None = None) -> tuple[list[SourceUtterance], Path]:
    """Read the rows of ``tsv`` (default ``validated.tsv``, else ``train.tsv``) under the folder ``src``.

    Raises `SourceError` if the tsv or ``clips/`` is missing or lacks a required column; a row with the
    wrong number of fields is counted in ``report`` as ``"malformed row"``.
    """
    src = Path(src).absolute()
    if not src.is_dir():
        raise SourceError(f"{src}: not a folder (expected a Common Voice language folder)")
    path = _find_tsv(src, tsv)
    clips = src / "clips"
    if not clips.is_dir():
        raise SourceError(f"{clips}: clips folder missing (the tsv's 'path' column names files in it)")
    report = report if report is not None else SkipReport()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing} (expected a tab-separated header with "
                              f"{list(REQUIRED_COLUMNS)}; found {reader.fieldnames})")
        for i, row in enumerate(reader, 2):
            if None in row or any(row[c] is None for c in REQUIRED_COLUMNS) or not row["path"] or not row["client_id"]:
                report.add("malformed row", f"{path}:{i}")
                continue
            rows.append((i, row))
    short = _short_ids({row["client_id"] for _, row in rows})
    utts = []
    for i, row in rows:
        cid = short[row["client_id"]]
        audio = clips / row["path"]
        utts.append(SourceUtterance(id=Path(row["path"]).stem, audio=audio, text=row["sentence"], unit=f"cv{cid}",
                                    speaker=f"commonvoice:{cid}", voice="real:commonvoice",
                                    locale=row.get("locale") or None, where=f"{path}:{i}"))
    return utts, path


def import_commonvoice(src: str | Path, out: str | Path, cfg: ImportConfig | None = None, tsv: str | None = None,
                       workers: int = 1, overwrite: bool = False) -> dict:
    """Import a Common Voice language folder as a corpus folder ``out``; return its ``corpus.json`` record."""
    cfg = cfg or ImportConfig()
    report = SkipReport()
    utts, path = read_commonvoice(src, tsv, report)
    source = {"kind": "commonvoice", "path": str(Path(src).absolute()), "tsv": path.name}
    return write_corpus(utts, out, cfg, source, report=report, workers=workers, overwrite=overwrite)
