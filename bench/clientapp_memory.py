"""Where a ClientApp process's memory goes over its first rounds, at 129M (issue 19: client peak RSS vs the bench).

`make paper-model` measured each ClientApp's round peak at about 2x the benchmark's fresh process for the same
stack (results/paper-model/summary.json ``client_over_bench``), and the round's *start* resident set close to its
peak: memory stays resident between rounds. This benchmark runs the same ClientApp handler
(`fedasr.federated.client_app.handle_train`, the paper-model profile's device stack) outside Ray, in one fresh
process per allocator setting, for ``--rounds`` rounds of different clients, and records after each round the
reply's ledger metrics (``peak-rss-bytes``: VmHWM since the round began; ``start-rss-bytes``) and the resident set.

Allocator settings (glibc malloc; one process each):

* ``glibc_default``: what every run so far used. glibc's mmap threshold is dynamic: once a large block is freed
  the threshold rises (up to 32 MiB), so later blocks of that size come from the heap and stay resident when freed;
* ``trim_after_round``: the default, plus ``malloc_trim(0)`` after each round (returns free heap pages);
* ``mmap_threshold_128k``: ``MALLOC_MMAP_THRESHOLD_=131072``, glibc's initial threshold fixed (which also turns
  the dynamic adjustment off): every block of 128 KiB or more is mapped and unmapped on its own.

Round 1 also builds the process's task and model: with OMC the model is the architecture on ``meta``, materialised
by the download (`ASRTask.build_skeleton`), so the checkpoint's weights are not read. The model is the paper preset (129M parameters, RNN-T over the profile's 1,024 sentencepiece pieces) with random
weights: memory does not depend on the weights' values. The round's download is encoded once, as the server's
strategy does (`transport.encode_download`, OMC 4-bit codes). ``seconds`` are wall times of each round; they are
only comparable between settings when nothing else runs on the machine (the JSON records the load average).

Usage::

    python bench/clientapp_memory.py [--rounds 3] [--out results/bench/clientapp_memory.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

for _k, _v in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

MiB = 2**20
CONFIG = "configs/paper_model/quick.toml"
SETTINGS = {"glibc_default": {}, "trim_after_round": {}, "mmap_threshold_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def prepare(work: Path) -> tuple[Path, Path, int]:
    """A random-init paper checkpoint with the profile's tokenizer, and round 1's encoded download."""
    import torch

    from fedasr import config as config_lib, data as data_lib, omc, train
    from fedasr.federated import transport
    from fedasr.model import build_model, model_config
    from fedasr.paper_model import PaperModelExperiment
    from fedasr.seeding import derive_seed
    from fedasr.tokenizer import build_tokenizer

    exp = config_lib.load(PaperModelExperiment, CONFIG)
    proxy = data_lib.load_corpus(exp.task.corpus, splits=["proxy_train"])["proxy_train"]
    tok = build_tokenizer(exp.seed.tokenizer, [u.text for u in proxy])
    model = build_model(model_config(exp.seed.preset, vocab_size=tok.vocab_size, **exp.seed.model))
    seed_dir = work / "seed"
    train.save_checkpoint(seed_dir, model, tok, exp.seed.features, {"step": 0})
    gen = torch.Generator().manual_seed(derive_seed("download", exp.fed.seed, 1))
    enc, meta, _ = transport.encode_download(model.state_dict(), exp.fed, omc.select_quantized(model, exp.fed.omc), gen)
    payload = work / "download.pkl"
    payload.write_bytes(pickle.dumps((enc, meta)))
    return seed_dir, payload, sum(p.numel() for p in model.parameters())


def child(seed_dir: str, payload: str, rounds: int, trim: bool) -> list[dict]:
    """One ClientApp process: ``rounds`` TRAIN messages (different clients), the ledger metrics of each reply."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedasr import config as config_lib, data as data_lib, memory
    from fedasr.experiments import FederatedExperiment, variant_config
    from fedasr.federated import client_app
    from fedasr.federated.config import fed_to_flat
    from fedasr.federated.transport import DOWNLOAD_META
    from fedasr.paper_model import PaperModelExperiment
    from fedasr.seeding import derive_seed

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # Messages need a run identity
    exp = config_lib.load(PaperModelExperiment, CONFIG)
    fx = FederatedExperiment(experiment="clientapp-memory", results_root=tempfile.mkdtemp(),
                             task=replace(exp.task, seed_model=seed_dir), fed=exp.fed, variants={"full_stack": {}})
    cfg = variant_config(fx, "full_stack")
    enc, meta = pickle.loads(Path(payload).read_bytes())
    clients = sorted({u.client for u in data_lib.load_corpus(exp.task.corpus, splits=["user_train"])["user_train"]})
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    rows = [{"stage": "before_round_1", "rss_mib": memory.read_status()["VmRSS"] / MiB}]
    for rnd in range(1, rounds + 1):
        cid = clients[rnd - 1]
        conf = ConfigRecord({**fed_to_flat(exp.fed), "server-round": rnd, DOWNLOAD_META: meta, "client-id": cid,
                             "client-seed": derive_seed("client", exp.fed.seed, rnd, cid)})
        msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in enc.items()}), "config": conf}),
                      dst_node_id=1, message_type=MessageType.TRAIN, group_id=str(rnd))
        t0 = time.perf_counter()
        reply = client_app.handle_train(msg, ctx, cfg)
        seconds = time.perf_counter() - t0
        if reply.has_error():
            raise RuntimeError(f"round {rnd}, client {cid}: {reply.error.reason}")
        m = reply.content["metrics"]
        row = {"stage": f"round_{rnd}", "client": cid, "peak_mib": m["peak-rss-bytes"] / MiB,
               "start_mib": m["start-rss-bytes"] / MiB, "hwm_reset": m["hwm-reset"], "seconds": seconds,
               "loss": m.get("loss")}
        del reply, msg
        row["rss_after_mib"] = memory.read_status()["VmRSS"] / MiB
        if trim:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            row["rss_after_trim_mib"] = memory.read_status()["VmRSS"] / MiB
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="results/bench/clientapp_memory.json")
    ap.add_argument("--child", nargs=3, metavar=("SEED_DIR", "PAYLOAD", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        rows = child(args.child[0], args.child[1], args.rounds, args.child[2] == "trim_after_round")
        print("ROWS " + json.dumps(rows))
        return {}
    from fedasr import results

    with tempfile.TemporaryDirectory() as tmp:
        seed_dir, payload, params = prepare(Path(tmp))
        out = {"config": CONFIG, "params": params, "rounds": args.rounds, "load_avg_start": os.getloadavg(),
               "settings": {}}
        for name, env in SETTINGS.items():
            proc = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--child", str(seed_dir),
                                   str(payload), name], env={**os.environ, **env}, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            rows = json.loads(line[5:])
            later = [r["peak_mib"] for r in rows[2:]]  # rounds after the first (the model is built in round 1)
            out["settings"][name] = {"env": env, "rows": rows, "round_1_peak_mib": rows[1]["peak_mib"],
                                     "later_peak_mib_max": max(later) if later else None}
            print(name, {k: v for k, v in out["settings"][name].items() if k != "rows"}, flush=True)
        out["load_avg_end"] = os.getloadavg()
    results.write_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
