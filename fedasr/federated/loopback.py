"""A Flower ``Grid`` whose nodes run the ClientApp in this process: the whole federation in one OS process.

The server-crash experiment (`fedasr.reliability.crash_resume`) needs a server process it can kill with
SIGKILL at any moment and restart, without Ray or SuperLink processes left behind: ``python -m
fedasr.federated.loopback --config F --set k=v`` runs the real ServerApp loop (`server_app.run_server`) and
the real ClientApp handlers over this grid, and writes the usual run folder (``rounds.jsonl``, checkpoints).
Replies are computed in message order, so a run is deterministic; with ``deadline`` a reply that took longer
than the round timeout is dropped (the server records a timeout).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LoopbackGrid", "main"]


class LoopbackGrid(Grid):
    """A Grid of ``len(node_configs)`` nodes answered by ``client_app`` in this process.

    Args:
        client_app: a ClientApp (`fedasr.federated.client_app.make_client_app`).
        node_configs: one ``--node-config`` mapping per node.
        delay_s: wait this long in each ``send_and_receive`` (a slower round; the crash test needs time to act).
        deadline: drop a reply whose client took longer than ``send_and_receive``'s ``timeout`` (the server
            records a timeout). Clients run one after another here, so each client's deadline counts from its own
            start, as if every device of the round trained at once.
    """

    def __init__(self, client_app, node_configs: Sequence[dict] = ({},), delay_s: float = 0.0,
                 deadline: bool = False) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # Messages need a run identity
        self.app, self.delay_s, self.deadline = client_app, delay_s, deadline
        self.node_configs = {100 + i: dict(c) for i, c in enumerate(node_configs)}

    def set_run(self, run) -> None:
        """Accept the run (unused: one run per grid)."""

    @property
    def run(self):
        """No Flower run object: the grid lives in the ServerApp's process."""
        return None

    def create_message(self, *args, **kwargs):
        """Not supported: build `Message` objects directly."""
        raise NotImplementedError("build flwr.app.Message objects directly")

    def get_node_ids(self) -> list[int]:
        """Return the node ids (100, 101, ...)."""
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Give each message an id (as a SuperLink would) and return the ids."""
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return nothing: replies are returned by `send_and_receive` directly."""
        return []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Answer every message with the ClientApp; an exception becomes an error reply, as in Flower."""
        messages = list(messages)
        self.push_messages(messages)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(),
                          run_config={})
            t0 = time.monotonic()
            try:
                reply = self.app(m, ctx)
            except Exception as e:  # noqa: BLE001 — what Flower does with a ClientApp exception
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m)
            if self.deadline and timeout is not None and time.monotonic() - t0 > timeout:
                continue  # arrived after the round's deadline: never delivered
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
        return replies


def main(argv: Sequence[str] | None = None) -> None:
    """Run one federated config on a `LoopbackGrid` and print the run folder (``--delay`` s per round)."""
    import argparse

    from fedasr.config import ConfigError, load, parse_overrides
    from fedasr.federated.client_app import make_client_app
    from fedasr.federated.config import FederatedConfig
    from fedasr.federated.server_app import run_server

    ap = argparse.ArgumentParser(prog="python -m fedasr.federated.loopback", description=main.__doc__)
    ap.add_argument("--config", help="TOML with [fed], [task], [run] tables (Default: the dataclass defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, TOML value")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each round waits before the clients (Default: 0)")
    args = ap.parse_args(argv)
    try:
        cfg = load(FederatedConfig, args.config, parse_overrides(args.set))
    except ConfigError as e:
        ap.error(str(e))
    cfg.run.progress = False
    cfg.run.overlap_central = False  # the clients run in this process: nothing to overlap with (RunSpec)
    run = run_server(LoopbackGrid(make_client_app(cfg), delay_s=args.delay), cfg)
    print(run.path, flush=True)


if __name__ == "__main__":
    main()
