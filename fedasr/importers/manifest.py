"""A plain manifest: a csv, tsv or JSON-lines file with ``path`` and ``text`` per utterance.

Optional columns: ``speaker``, ``client`` (one client per value; default: the speaker), ``id`` (default: the
audio path without its extension) and ``duration`` (accepted, not trusted: every file is decoded and
measured). Common other names are understood (``audio_filepath``/``audio``/``file`` for ``path``;
``sentence``/``transcript``/``transcription`` for ``text``, as NeMo and Hugging Face manifests write them).
Relative audio paths are relative to the manifest's folder. Without ``speaker`` or ``client`` every
utterance would be one speaker, and there are no users to federate: that fails with a message.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from fedasr.data import SkipReport
from fedasr.importers.common import ImportConfig, SourceError, SourceUtterance, safe_name
from fedasr.importers.writer import write_corpus

__all__ = ["COLUMNS", "read_manifest_file", "import_manifest"]

# column -> the names it may have in the file (first match wins)
COLUMNS = {"path": ("path", "audio_filepath", "audio", "file"), "text": ("text", "sentence", "transcript",
                                                                       "transcription"),
           "speaker": ("speaker", "speaker_id"), "client": ("client", "client_id"), "id": ("id", "utt_id"),
           "duration": ("duration",)}


def _rows(path: Path, report: SkipReport) -> tuple[list[tuple[int, dict]], list[str]]:
    """``(line number, row)`` pairs and the column names of a csv/tsv/jsonl file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows, names = [], set()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                assert isinstance(d, dict)
            except (json.JSONDecodeError, AssertionError):
                report.add("malformed row", f"{path}:{i}")
                continue
            names.update(d)
            rows.append((i, d))
        return rows, sorted(names)
    if suffix not in (".csv", ".tsv"):
        raise SourceError(f"{path}: unknown manifest type {suffix!r} (expected .csv, .tsv or .jsonl)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        rows = []
        for i, row in enumerate(reader, 2):
            if None in row or None in row.values():
                report.add("malformed row", f"{path}:{i}")
                continue
            rows.append((i, row))
        return rows, list(reader.fieldnames or [])


def read_manifest_file(path: str | Path, report: SkipReport | None = None) -> tuple[list[SourceUtterance], dict]:
    """Read a csv/tsv/jsonl manifest into `SourceUtterance` s; returns them and ``{column: name in file}``."""
    path = Path(path).absolute()
    if not path.is_file():
        raise SourceError(f"{path}: manifest file not found")
    report = report if report is not None else SkipReport()
    rows, names = _rows(path, report)
    found = {col: next((n for n in aliases if n in names), None) for col, aliases in COLUMNS.items()}
    missing = [c for c in ("path", "text") if found[c] is None]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing} (expected 'path' and 'text', or one of "
                          f"{[COLUMNS[c] for c in missing]}; found {names})")
    if found["speaker"] is None and found["client"] is None:
        raise SourceError(f"{path}: no 'speaker' or 'client' column: clients are formed per speaker or client "
                          f"(found columns {names})")
    utts = []
    for i, row in rows:
        get = lambda c: row.get(found[c]) if found[c] else None  # noqa: E731
        audio = Path(str(get("path") or ""))
        if not str(get("path") or "").strip():
            report.add("malformed row", f"{path}:{i} (empty path)")
            continue
        audio = audio if audio.is_absolute() else path.parent / audio
        speaker = str(get("speaker") if get("speaker") not in (None, "") else get("client"))
        client = str(get("client") if get("client") not in (None, "") else speaker)
        uid = str(get("id") or safe_name(str(Path(str(get("path"))).with_suffix(""))))
        utts.append(SourceUtterance(id=uid, audio=audio, text=str(get("text") or ""), unit=safe_name(client),
                                    speaker=speaker, voice="real:manifest", where=f"{path}:{i}"))
    return utts, {c: n for c, n in found.items() if n}


def import_manifest(path: str | Path, out: str | Path, cfg: ImportConfig | None = None, workers: int = 1,
                    overwrite: bool = False) -> dict:
    """Import the utterances a csv/tsv/jsonl manifest lists as a corpus folder ``out``; return ``corpus.json``."""
    cfg = cfg or ImportConfig()
    report = SkipReport()
    utts, columns = read_manifest_file(path, report)
    source = {"kind": "manifest", "path": str(Path(path).absolute()), "columns": columns}
    return write_corpus(utts, out, cfg, source, report=report, workers=workers, overwrite=overwrite)
