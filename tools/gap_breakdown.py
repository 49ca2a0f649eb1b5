"""Where a seed's domain gap sits: WER by channel and voice, from the corpus plan.

Decodes proxy_test (split into utterances with and without a simulated device/room channel, and by
TTS engine) and the user splits' utterances without new terms (split by the client's band-limit,
room, noise SNR, espeak-ng accent and variant, and each variant by SNR and by room), and writes one JSON
report, with how many clients speak through a band-limit, room or noise at all::

    python tools/gap_breakdown.py --seed results/seed/model --corpus data/quick \
        --out results/seed-screens/gap_quick.json

Each group is ``{"utterances", "ref_words", "wer", "cer"}`` (`fedasr.metrics.wer_report`: errors summed
over the group's words). The channels of proxy utterances are not in the manifests; they are re-planned
from the profile and seed in ``corpus.json``, which `fedasr.corpus.build_plan` makes deterministic.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from fedasr import corpus as corpus_lib
from fedasr import data as data_lib
from fedasr import metrics
from fedasr import train


def _group(utts, hyps) -> dict:
    r = metrics.wer_report([u.text for u in utts], [hyps[u.id] for u in utts])
    return {"utterances": len(utts), "ref_words": r["ref_words"], "wer": r["wer"], "cer": r["cer"]}


def breakdown(seed: str | Path, corpus: str | Path, splits=("proxy_test", "user_test", "user_heldout")) -> dict:
    """Decode ``splits`` of ``corpus`` with the checkpoint in ``seed``; the proxy channels are re-planned
    from the profile sizes and corpus seed that ``corpus.json`` records."""
    model, tok, fcfg, state = train.load_checkpoint(seed)
    corpus = Path(corpus)
    utts = data_lib.load_corpus(corpus, splits=list(splits))
    record = json.loads((corpus / "corpus.json").read_text())
    plan = corpus_lib.build_plan(corpus_lib.Profile.from_record(record["sizes"]), record["seed"])
    channel = {j.id: j.channel for js in plan.jobs.values() for j in js}
    clients = {c["id"]: c for c in json.loads((corpus / "clients.json").read_text())}
    out = {"seed": str(seed), "fingerprint": state.get("fingerprint"), "corpus": str(corpus), "splits": {},
           "clients": {"total": len(clients), "with_channel": sum(
               bool(c["channel"]["band"] or c["channel"]["rt60"] or c["channel"]["noise"]) for c in clients.values())}}
    for split, us in utts.items():
        hyps = train.evaluate(model, tok, us, fcfg, keep_hypotheses=True)["hypotheses"]
        us = [u for u in us if u.id in hyps]
        groups = collections.defaultdict(list)
        for u in us:
            if split.startswith("proxy"):
                ch = channel[u.id]
                groups["clean" if ch is None else "channel"].append(u)
                groups["engine=" + u.speaker.split(":")[0]].append(u)
                if ch is not None:
                    groups[f"band={ch.band}"].append(u)
                    groups[f"rt60={ch.rt60}"].append(u)
                    groups[f"snr={ch.snr}"].append(u)
            elif not u.terms:
                c = clients[u.client]
                ch = c["channel"]
                voice = c["voice"].split(":", 1)[1]
                groups["no_terms"].append(u)
                groups[f"band={tuple(ch['band']) if ch['band'] else None}"].append(u)
                groups[f"rt60={ch['rt60']}"].append(u)
                groups[f"snr={ch['snr']}"].append(u)
                groups["accent=" + voice.split("+")[0]].append(u)
                variant = "variant=" + (voice.split("+")[1] if "+" in voice else voice)
                groups[variant].append(u)
                groups[f"{variant},snr={ch['snr']}"].append(u)  # a voice's WER next to the noise its clients drew
                groups[f"{variant},rt60={ch['rt60']}"].append(u)
        out["splits"][split] = {"all": _group(us, hyps)} | {g: _group(v, hyps) for g, v in sorted(groups.items())}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", default="results/seed/model", help="checkpoint folder (Default: results/seed/model)")
    ap.add_argument("--corpus", default="data/quick", help="corpus folder (Default: data/quick)")
    ap.add_argument("--splits", default="proxy_test,user_test,user_heldout", help="comma-separated splits")
    ap.add_argument("--out", required=True, help="JSON report to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    report = breakdown(args.seed, args.corpus, splits=args.splits.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for split, groups in report["splits"].items():
        print(split)
        for g, r in groups.items():
            print(f"  {g:32s} {r['utterances']:5d} utts  WER {r['wer']:.3f}  CER {r['cer']:.3f}")


if __name__ == "__main__":
    main()
