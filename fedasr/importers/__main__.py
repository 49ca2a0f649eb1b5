"""Command line: ``python -m fedasr.importers {librispeech,commonvoice,manifest} SRC --out DIR [options]``, and
``python -m fedasr.importers configs --corpus DIR [--profile NAME] [--like quick]`` (`fedasr.importers.configs`).

Every `ImportConfig` field is a flag (``--proxy-fraction 0.3``; the help repeats each default), and
``--config FILE.toml`` loads them from a file first (`fedasr.config.load`: unknown keys fail).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Sequence

from fedasr import config as config_lib
from fedasr.importers.common import ImportConfig, SourceError
from fedasr.importers.commonvoice import import_commonvoice
from fedasr.importers.configs import write_configs
from fedasr.importers.librispeech import import_librispeech
from fedasr.importers.manifest import import_manifest
from fedasr.importers.roles import POOLS


def _csv(s: str) -> list[str]:
    return [x for x in (p.strip() for p in s.split(",")) if x]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="corpus folder to write (e.g. data/librispeech)")
    p.add_argument("--config", help="TOML file of ImportConfig keys (kebab-case), applied before the flags")
    p.add_argument("--workers", type=int, default=0, help="processes decoding audio (Default: 0 = all cores, ≤ 8)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds a corpus (Default: fail)")
    hints = typing.get_type_hints(ImportConfig)
    for f in dataclasses.fields(ImportConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=hints[f.name], default=None, dest=f"cfg_{f.name}",
                       metavar=hints[f.name].__name__.upper(),
                       help=f"{f.metadata['help']} (Default: {f.default})")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fedasr.importers`` argument parser."""
    ap = argparse.ArgumentParser(prog="python -m fedasr.importers", allow_abbrev=False,
                                 description="Import a real speech corpus as a fedasr corpus folder.")
    sub = ap.add_subparsers(dest="kind", required=True)
    ls = sub.add_parser("librispeech", allow_abbrev=False, help="a LibriSpeech tree (root or one subset folder)")
    ls.add_argument("src", help="LibriSpeech root (holding train-clean-100/, ...) or one subset folder")
    for pool in POOLS:
        ls.add_argument(f"--{pool.replace('_', '-')}-subsets", type=_csv, default=[], dest=f"pool_{pool}",
                        metavar="SUBSETS", help=f"comma-separated subsets whose speakers form {pool} (Default: none)")
    cv = sub.add_parser("commonvoice", allow_abbrev=False,
                        help="a Common Voice language folder (validated.tsv + clips/)")
    cv.add_argument("src", help="folder holding validated.tsv (or train.tsv) and clips/")
    cv.add_argument("--tsv", help="tsv file to read, relative to SRC (Default: validated.tsv, else train.tsv)")
    mf = sub.add_parser("manifest", allow_abbrev=False,
                        help="a csv, tsv or jsonl file with path and text (and speaker/client)")
    mf.add_argument("src", help="the manifest file")
    for p in (ls, cv, mf):
        _add_common(p)
    cf = sub.add_parser("configs", allow_abbrev=False,
                        help="seed, federated and quality configs for an imported corpus, from a profile's")
    cf.add_argument("--corpus", required=True, help="the imported corpus folder (e.g. data/librispeech)")
    cf.add_argument("--profile", help="name of the configs and results folders (Default: the corpus folder's name)")
    cf.add_argument("--like", default="quick", help="profile whose configs are copied (Default: quick)")
    cf.add_argument("--out", default="configs", help="writes OUT/{seed,federated,quality}/PROFILE.toml "
                                                     "(Default: configs)")
    cf.add_argument("--from", default="configs", dest="source",
                    help="folder holding {seed,federated,quality}/LIKE.toml (Default: configs)")
    cf.add_argument("--results-root", default="results", help="results folder the configs name (Default: results)")
    cf.add_argument("--overwrite", action="store_true", help="replace existing configs of PROFILE (Default: fail)")
    return ap


def _configs(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Write an imported corpus' configs (`write_configs`); print and return ``{kind: path}``."""
    try:
        paths = write_configs(args.corpus, args.profile, args.like, args.out, args.source, args.results_root,
                              args.overwrite)
    except SourceError as e:
        ap.exit(2, f"python -m fedasr.importers configs: error: {e}\n")
    out = {kind: str(p) for kind, p in paths.items()}
    print(json.dumps(out, indent=1))
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Run one import (print and return its ``corpus.json`` summary: splits, clients, skips) or write configs."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.kind == "configs":
        return _configs(ap, args)
    flags = {k[4:].replace("_", "-"): v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    try:
        cfg = config_lib.load(ImportConfig, args.config, flags)
    except (config_lib.ConfigError, ValueError) as e:
        ap.exit(2, f"python -m fedasr.importers: error: {e}\n")
    kw = {"workers": args.workers or min(os.cpu_count() or 1, 8), "overwrite": args.overwrite}
    try:
        if args.kind == "librispeech":
            roles = {pool: getattr(args, f"pool_{pool}") for pool in POOLS if getattr(args, f"pool_{pool}")}
            record = import_librispeech(args.src, args.out, cfg, roles=roles, **kw)
        elif args.kind == "commonvoice":
            record = import_commonvoice(args.src, args.out, cfg, tsv=args.tsv, **kw)
        else:
            record = import_manifest(args.src, args.out, cfg, **kw)
    except SourceError as e:
        ap.exit(2, f"python -m fedasr.importers: error: {e}\n")
    summary = {"out": args.out, "source": {k: v for k, v in record["source"].items() if k != "skipped_examples"},
               "splits": record["splits"], "clients": record["clients"], "audio": record["audio"]}
    print(json.dumps(summary, indent=1, sort_keys=True))
    return record


if __name__ == "__main__":
    main()
