"""Which virtual node trains which sampled client: the largest client first (``run.largest-first``).

A scheduling choice only; what a round computes does not change. Flower's Simulation Engine queues a round's
messages in the order its virtual nodes were registered (partition 0, 1, …; ``vce_api.add_messages_to_queue``),
and its ``concurrency`` workers take them from that queue as they become free. A round lasts until its last
client finishes, and the quick profile's clients differ in size by 30× (1 to 30 labelled utterances), so a large
client queued last leaves the other worker idle. Handing the sampled clients to the nodes in decreasing size
(``"largest-first"``) makes the queue longest-processing-time-first (LPT), whose makespan is within 4/3 of the
best possible; without it node i trains the i-th sampled client. `fedasr.federated.launch.run_simulation` turns it
on (the in-process Simulation Engine, where every experiment runs).

The server learns the registration order once per run by asking every node its ``partition-id`` (a QUERY);
nodes that have none (SuperNodes started without one) sort last, by node id. Deployment SuperNodes each pull
their own messages, so there the order changes nothing. The aggregate does not depend on it either: updates are
summed in client-id order (`fedasr.federated.strategies.FedAsrStrategy.aggregate_train`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

ORDER_QUERY = "order"  # QUERY action asking a node its partition id

__all__ = ["ORDER_QUERY", "assign_nodes", "node_order", "order_messages"]


def order_messages(nodes: Iterable[int]) -> list[Message]:
    """One ORDER_QUERY message per node."""
    return [Message(RecordDict({"config": ConfigRecord({"action": ORDER_QUERY})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]


def node_order(nodes: Sequence[int], replies: Iterable[Message]) -> list[int]:
    """``nodes`` in the engine's dispatch order: by the partition id each answered (−1: none), then by id."""
    pid = {n: -1 for n in nodes}
    for reply in replies:
        if not reply.has_error() and reply.metadata.src_node_id in pid:
            pid[reply.metadata.src_node_id] = int(reply.content["config"]["partition-id"])
    return sorted(nodes, key=lambda n: (pid[n] < 0, pid[n], n))


def assign_nodes(sampled: Sequence[str], nodes: Sequence[int], cost: Callable[[str], float] | None) -> list[int]:
    """The node of each sampled client (same order as ``sampled``): with ``cost``, the costliest client goes to
    ``nodes[0]``, the next to ``nodes[1]``, … (ties keep the sampling order); without it, ``nodes[i % len]``."""
    if cost is None:
        return [nodes[i % len(nodes)] for i in range(len(sampled))]
    rank = sorted(range(len(sampled)), key=lambda i: -cost(sampled[i]))  # stable: ties keep the sampling order
    out = [0] * len(sampled)
    for position, i in enumerate(rank):
        out[i] = nodes[position % len(nodes)]
    return out
