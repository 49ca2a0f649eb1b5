"""The ASR federated task: user-domain clients with on-device labels, starting from the seed model.

Implements `fedasr.federated.task.FederatedTask` for the Conformer ASR model. A client's training
data are its ``user_train`` utterances (audio → log-mels on the device) paired with **on-device
labels** — never the reference transcripts. Where labels come from is data, a JSON-lines *label
store* ``{"id", "label"}`` per utterance:

* ``hypotheses`` — what the phone showed: the seed model's greedy transcript (paper §1: FL has no
  human labels; this is the ground-truth-free baseline of the federation issue);
* a correction store written by `fedasr.corrections` (user-corrected transcripts, paper §2.5);
* ``truth`` — the references themselves: an *oracle* upper bound no real client has, for analysis only.

Utterances whose label is empty, or too long for their audio (CTC needs T' ≥ U), are skipped and
counted, so one bad utterance never fails a client's round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedasr import config as config_lib
from fedasr import data as data_lib
from fedasr import clients, memory, refinement, results, train
from fedasr.data import Batch, DataError, SkipReport, Utterance
from fedasr.features import collate

__all__ = ["ASRTaskConfig", "ASRTask", "make_asr_task", "write_hypothesis_labels", "read_labels", "read_label_lines",
           "hypothesis_labels_path"]


@dataclass
class ASRTaskConfig:
    """Knobs of the ASR task (``task.params.*`` when ``task.name = "asr"``)."""

    corpus: str = "data/quick"  # corpus folder (manifests + audio)
    seed_model: str = "results/seed/model"  # checkpoint folder the global model starts from
    labels: str = "hypotheses"  # "hypotheses" | "truth" (oracle) | path to a label store .jsonl
    train_split: str = "user_train"  # the clients' on-device utterances
    eval_splits: list[str] = field(default_factory=lambda: ["user_test", "proxy_test"])  # server-side eval
    eval_max_utterances: int = 0  # cap per eval split (0 = all), first N in manifest order
    max_client_utterances: int = 0  # cap per client and round (0 = all; a device-time budget)
    min_corrections: int = 0  # client selection (paper §2.5): only clients with ≥ m user corrections
    #   in their label store take part (0 = every client). In a deployment each device reports this
    #   count when it checks in; the simulation reads it from the devices' label stores.
    wca_buckets: int = 1024  # hashed corrected-word histogram a client reports for WCA (fedasr.refinement)
    central_split: str = "proxy_train"  # the server's own data for Mixed FL's central update (fed.central-mix)


def hypothesis_labels_path(cfg: ASRTaskConfig) -> Path:
    """Where the seed model's hypotheses for ``cfg.train_split`` are stored (beside the seed checkpoint), named by
    the split's manifest too (a sha256 prefix): one seed model decodes other corpora (imported ones) as well."""
    manifest = Path(cfg.corpus) / "manifests" / f"{cfg.train_split}.jsonl"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.exists() else "missing"
    return Path(cfg.seed_model).parent / "labels" / f"{cfg.train_split}.{digest}.hypotheses.jsonl"


def read_label_lines(path: str | Path) -> list[dict]:
    """Read a label store: one ``{"id", "label", ...}`` object per line, validated."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"label store {path} does not exist (write it with fedasr.asr_task.write_hypothesis_labels "
                        "or fedasr.corrections)")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            d["id"], d["label"] = str(d["id"]), str(d["label"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{i}: bad label line ({e})") from None
        out.append(d)
    return out


def read_labels(path: str | Path) -> dict[str, str]:
    """Read a label store into ``{id: label}``."""
    return {d["id"]: d["label"] for d in read_label_lines(path)}


def write_hypothesis_labels(cfg: ASRTaskConfig, overwrite: bool = False) -> Path:
    """Decode every ``train_split`` utterance with the seed model and store the hypotheses as labels.

    This is what each phone already holds: the transcript it showed the user. Computed once, on the
    server machine for the simulation (each device would compute its own). Returns the store's path.
    """
    path = hypothesis_labels_path(cfg)
    if path.exists() and not overwrite:
        return path
    model, tokenizer, fcfg, _ = train.load_checkpoint(cfg.seed_model)
    utts = data_lib.load_corpus(cfg.corpus, splits=[cfg.train_split])[cfg.train_split]
    rep = train.evaluate(model, tokenizer, utts, fcfg, keep_hypotheses=True)
    return results.write_jsonl(path, ({"id": uid, "label": hyp} for uid, hyp in rep["hypotheses"].items()))


class ASRTask:
    """User-domain clients of a corpus; see the module docstring."""

    def __init__(self, cfg: ASRTaskConfig) -> None:
        self.cfg = cfg
        corpus = data_lib.load_corpus(cfg.corpus, splits=[cfg.train_split, *cfg.eval_splits])
        if cfg.train_split not in corpus:
            raise DataError(f"{cfg.corpus} has no {cfg.train_split} split")
        self._by_client: dict[str, list[Utterance]] = {}
        for u in corpus[cfg.train_split]:
            if u.client is not None:
                self._by_client.setdefault(u.client, []).append(u)
        self._eval = {s: corpus[s][: cfg.eval_max_utterances or None] for s in cfg.eval_splits if s in corpus}
        self._eval_feats: dict[str, dict[str, torch.Tensor]] = {}
        # the architecture, tokenizer and features only: a ClientApp process holds the task for its lifetime, and
        # reading the weights here would cost it the checkpoint's size at its first round (129M: 0.5 GB of fp32)
        self._model_config, self.tokenizer, self.fcfg, _ = train.load_checkpoint(cfg.seed_model, weights=False)
        with torch.device("meta"):  # a weightless copy: only `validate` (lengths vs labels) is used
            self._validator = train.build_model(self._model_config)
        self._store: dict[str, list[dict]] = {}  # correction label-store lines per client (refinement)
        if cfg.labels == "truth":
            self._labels = None
        else:
            path = hypothesis_labels_path(cfg) if cfg.labels == "hypotheses" else Path(cfg.labels)
            lines = read_label_lines(path)
            self._labels = {d["id"]: d["label"] for d in lines}
            for d in lines:
                if "correction" in d and "client" in d:
                    self._store.setdefault(d["client"], []).append(d)
        if cfg.min_corrections > 0 and not self._store:
            raise DataError(f"task.params.min-corrections = {cfg.min_corrections} needs a correction label store "
                            f"(fedasr.refinement.write_label_store), got labels = {cfg.labels!r}")
        self.skips = SkipReport()
        self._population: clients.Population | None = None  # device tiers, drawn when first needed
        self._central: list[Utterance] | None = None  # the server's proxy data (central_batches), loaded on use

    # --- FederatedTask -------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """Return the seed model (the global model's starting point), read from its checkpoint again."""
        return train.load_checkpoint(self.cfg.seed_model)[0]

    def build_skeleton(self) -> torch.nn.Module:
        """The seed model's architecture on the ``meta`` device, without weights: a ClientApp whose download carries
        every variable in OMC's storage format builds its model from that download (`omc.load_payload`), as a
        phone would, instead of reading the checkpoint (`fedasr.federated.client_app._runtime`)."""
        with torch.device("meta"):
            return train.build_model(self._model_config)

    def client_ids(self) -> list[str]:
        """Client ids of ``train_split`` in sorted order (only those with ≥ ``min_corrections`` corrections)."""
        if self.cfg.min_corrections > 0:
            counts = refinement.correction_counts(line for lines in self._store.values() for line in lines)
            eligible = set(refinement.eligible_clients(counts, self.cfg.min_corrections))
            return sorted(c for c in self._by_client if c in eligible)
        return sorted(self._by_client)

    def client_metrics(self, client_id: str) -> dict:
        """Statistics the device reports with its update (WCA histogram and counts; empty without corrections)."""
        if client_id not in self._store:
            return {}
        return refinement.client_round_stats(self._store[client_id], client_id, self.cfg.wca_buckets).to_metrics()

    def num_examples(self, client_id: str) -> int:
        """Utterances of the client that have a usable (non-empty) on-device label."""
        return len(self._labelled(client_id))

    def _labelled(self, client_id: str) -> list[Utterance]:
        if client_id not in self._by_client:
            raise KeyError(f"unknown client {client_id!r}")
        out = []
        for u in self._by_client[client_id]:
            label = u.text if self._labels is None else self._labels.get(u.id, "")
            label = data_lib.normalize_text(label)
            if label:
                out.append(dataclasses.replace(u, text=label, terms=()))  # the device never sees the reference
        if self.cfg.max_client_utterances:
            out = out[: self.cfg.max_client_utterances]
        return out

    def client_batches(self, client_id: str, micro_batch: int, seed: int) -> list[Batch]:
        """The client's labelled utterances as log-mel batches of ≤ ``micro_batch`` utterances.

        Bad audio and utterances too short for their label are skipped and counted in ``self.skips``.
        Raises ``ValueError`` when nothing usable is left (the client declines the round).
        """
        utts = self._labelled(client_id)
        if not utts and client_id in self._store:  # a selected device whose filter kept nothing declines
            refinement.client_round_stats(self._store[client_id], client_id, self.cfg.wca_buckets)
        order = np.random.default_rng(seed).permutation(len(utts))
        batches = self._batches([utts[i] for i in order], micro_batch)
        if not batches:
            raise ValueError(f"client {client_id!r} has no usable labelled utterances ({self.skips.summary()})")
        return batches

    def central_batches(self, micro_batch: int, seed: int, n: int) -> list[Batch]:
        """``n`` utterances of the server's own ``central_split`` (reference transcripts: its data), drawn
        with ``seed``, as batches of ≤ ``micro_batch`` (Mixed FL's central update; `fedasr.federated.client_update.central_update`)."""
        if self._central is None:
            corpus = data_lib.load_corpus(self.cfg.corpus, splits=[self.cfg.central_split])
            if not corpus.get(self.cfg.central_split):
                raise DataError(f"{self.cfg.corpus} has no {self.cfg.central_split} split for the central update")
            self._central = corpus[self.cfg.central_split]
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(self._central), size=min(n, len(self._central)), replace=False)
        batches = self._batches([self._central[i] for i in sorted(pick)], micro_batch)
        if not batches:
            raise ValueError(f"no usable {self.cfg.central_split} utterances ({self.skips.summary()})")
        return batches

    def _batches(self, utts: list[Utterance], micro_batch: int) -> list[Batch]:
        """Featurize and collate ``utts`` in order; bad audio and too-short utterances are counted skips."""
        feats = train.featurize(utts, self.fcfg, self.skips)
        utts = [u for u in utts if u.id in feats]
        batches = []
        for i in range(0, len(utts), micro_batch):
            group = utts[i: i + micro_batch]
            batch = collate(group, feats, self.tokenizer)
            bad = self._validator.validate(batch)
            for j in bad:
                self.skips.add("too short for label", group[j].id)
            keep = [u for j, u in enumerate(group) if j not in bad]
            if keep:
                batches.append(collate(keep, feats, self.tokenizer) if bad else batch)
        return batches

    # --- what the device knows about its own round (partial training's budget policy) ------------
    def round_shape(self, client_id: str, micro_batch: int) -> memory.RoundShape:
        """The client's round as `fedasr.memory.estimate` sees it, from its own labelled utterances.

        Worst case over the client's data: its longest utterance (10 ms frames) and longest label
        (tokens), ``micro_batch`` utterances per pass, ``ceil(n / micro_batch)`` passes.
        """
        utts = self._labelled(client_id)
        if not utts:
            raise ValueError(f"client {client_id!r} has no labelled utterances")
        frames = max(int(round(u.duration * 100)) for u in utts)
        tokens = max(len(self.tokenizer.encode(u.text)) for u in utts)
        return memory.RoundShape(batch=min(micro_batch, len(utts)), frames=frames, tokens=tokens,
                                 micro_batches=-(-len(utts) // micro_batch))

    def memory_budget_bytes(self, client_id: str) -> int:
        """The training-memory budget of the client's phone (its `fedasr.clients` device tier)."""
        if self._population is None:
            self._population = clients.Population.from_utterances(
                (u for us in self._by_client.values() for u in us), split=self.cfg.train_split)
        return self._population.profile(client_id).memory_budget_bytes

    def eval_identity(self) -> str:
        """What `evaluate` depends on besides the weights (corpus, splits, cap, the seed's tokenizer and front
        end): runs that share it and start from the same weights share their round-0 evaluation."""
        return json.dumps([self.cfg.corpus, self.cfg.seed_model, list(self.cfg.eval_splits),
                           self.cfg.eval_max_utterances])

    def evaluate(self, model: torch.nn.Module,
                 hypotheses: dict[str, dict[str, str]] | None = None) -> dict[str, float]:
        """Greedy WER/CER on each eval split (``wer_user``, ``wer_proxy``, ``wer_user_heldout``), plus the
        new-terms subsets: ``wer_new_terms`` and ``term_recall`` (unseen users, ``user_test``),
        ``wer_new_terms_seen`` and ``term_recall_seen`` (held-out utterances of training clients, whose own
        names FL can learn); on the dev twins ``user_dev`` / ``user_heldout_dev`` the same with ``_dev`` /
        ``_seen_dev``. ``hypotheses``, if given, receives ``{split: {utterance id: hypothesis}}``
        (the per-utterance record behind `fedasr.quality_evidence`)."""
        out = {}
        for split, utts in self._eval.items():
            if split not in self._eval_feats:
                self._eval_feats[split] = train.featurize(utts, self.fcfg)
            rep = train.evaluate(model, self.tokenizer, utts, self.fcfg, feats=self._eval_feats[split],
                                 keep_hypotheses=hypotheses is not None)
            if hypotheses is not None:
                hypotheses[split] = rep.get("hypotheses", {})
            name = split.replace("_test", "")
            out[f"wer_{name}"] = rep.get("wer")
            out[f"cer_{name}"] = rep.get("cer")
            new_terms = rep.get("subsets", {}).get("new_terms", {}).get("wer")
            recall = rep.get("term_recall", {}).get("recall")
            # unseen users / seen users' new utterances, and their dev twins (choices are made on those, issue 18)
            suffix = {"user_test": "", "user_heldout": "_seen", "user_dev": "_dev",
                      "user_heldout_dev": "_seen_dev"}.get(split)
            if suffix is not None and new_terms is not None:
                out[f"wer_new_terms{suffix}"] = new_terms
            if suffix is not None and recall is not None:
                out[f"term_recall{suffix}"] = recall
        return out


def make_asr_task(params: dict) -> ASRTask:
    """Factory registered as task ``"asr"``: validates ``params`` against `ASRTaskConfig`."""
    return ASRTask(config_lib.from_dict(ASRTaskConfig, params, prefix="task.params"))
