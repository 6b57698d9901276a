"""Replication as the pipeline poller sees it: brokers up or down, and what changed between polls.

Each poll's metadata gives every partition's leader, replicas and in-sync replicas (ISR), and
the brokers that are registered (a fenced or stopped broker is left out). The replicas name every
broker a partition lives on, so a broker missing from the registered ones but named as a replica
is one that is down. Comparing a poll with the one before gives the events the page's timeline
shows: a broker leaving or coming back, leaders moving, in-sync sets shrinking and growing back.
"""
from __future__ import annotations

from collections import deque

SHOWN = 4  # partitions named in one event's text; the rest are counted


def _names(tps: list[tuple[str, int]]) -> str:
    names = [f"{t}/{p}" for t, p in sorted(tps)]
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _partitions(n: int) -> str:
    return f"{n} partition{'' if n == 1 else 's'}"


class ReplicationWatch:
    """Keeps the previous poll's leaders, in-sync sets and brokers; `observe` returns the page's view."""

    def __init__(self, history_s: float):
        self.history_s = history_s
        self.events: deque = deque()  # (t_ms, kind, text)
        self.addresses: dict[int, str] = {}  # every broker seen, with its last known address
        self.before: tuple[set[int], dict] | None = None

    def reset(self) -> None:
        """Another broker (a renewed embedded one): what was seen before says nothing about it."""
        self.events.clear()
        self.addresses.clear()
        self.before = None

    def restore(self, view: dict, partitions: list[dict]) -> None:
        """Carry on from `view` (what observe returned last) and that poll's partition rows."""
        self.events = deque(view["events"])
        self.addresses = {b["id"]: b["address"] for b in view["brokers"]}
        up = {b["id"] for b in view["brokers"] if b["up"]}
        self.before = (up, self._state(partitions))

    @staticmethod
    def _state(partitions: list[dict]) -> dict:
        return {(p["topic"], p["partition"]): (p["leader"], frozenset(p["isr"]), len(p["replicas"])) for p in partitions}

    def observe(self, now_ms: int, up: dict[int, str], partitions: list[dict], controller: int | None) -> dict:
        """`up`: registered broker id -> address; `partitions`: the poller's rows (topic,
        partition, leader, replicas, isr). Records the events since the last call."""
        self.addresses.update(up)
        state = self._state(partitions)
        for p in partitions:
            for node in p["replicas"]:
                self.addresses.setdefault(node, "")
        if self.before is not None:
            self._compare(now_ms, *self.before, set(up), state)
        self.before = (set(up), state)
        oldest = now_ms - self.history_s * 1000
        while self.events and self.events[0][0] < oldest:
            self.events.popleft()
        leads: dict[int, int] = {}
        for leader, _isr, _replicas in state.values():
            leads[leader] = leads.get(leader, 0) + 1
        factor = max((len(p["replicas"]) for p in partitions), default=0)
        return {
            "brokers": [{"id": node, "address": address, "up": node in up, "leads": leads.get(node, 0),
                         "controller": node == controller} for node, address in sorted(self.addresses.items())],
            "factor": factor,
            "under_replicated": sum(1 for p in partitions if len(p["isr"]) < len(p["replicas"])),
            "offline": sum(1 for p in partitions if p["leader"] < 0),
            "events": list(self.events),
        }

    def _compare(self, now: int, was_up: set[int], was: dict, up: set[int], state: dict) -> None:
        for node in sorted(was_up - up):
            self.events.append((now, "broker-down", (f"broker {node} left the cluster (it stopped heartbeating to the controller, "
                                                    "or shut down)")))
        moved: dict[tuple[int, int], list] = {}
        dropped: dict[int, list] = {}
        rejoined: dict[int, list] = {}
        for tp, (leader, isr, _replicas) in state.items():
            if tp not in was:
                continue
            old_leader, old_isr, _ = was[tp]
            if leader != old_leader:
                moved.setdefault((old_leader, leader), []).append(tp)
            for node in old_isr - isr:
                dropped.setdefault(node, []).append(tp)
            for node in isr - old_isr:
                rejoined.setdefault(node, []).append(tp)
        for (old, new), tps in sorted(moved.items()):
            if new < 0:
                text = f"no leader for {_names(tps)}: offline, no in-sync replica is alive to take over"
            elif old < 0:
                text = f"broker {new} leads {_names(tps)} again: back online"
            else:
                text = f"leader moved from broker {old} to broker {new} for {_names(tps)}: a follower that was in sync took over"
            self.events.append((now, "leader", text))
        under = sum(1 for _leader, isr, replicas in state.values() if len(isr) < replicas)
        for node, tps in sorted(dropped.items()):
            self.events.append((now, "isr-shrink", (f"broker {node} dropped out of the in-sync replicas of {_partitions(len(tps))} "
                                                   f"({_names(tps)}): {under} under-replicated")))
        for node, tps in sorted(rejoined.items()):
            self.events.append((now, "isr-grow", f"broker {node} caught up: an in-sync replica again for {_partitions(len(tps))}; "
                                                 + (f"{under} still under-replicated" if under else "every partition fully in sync")))
        for node in sorted(up - was_up):
            self.events.append((now, "broker-up", f"broker {node} joined the cluster: its replicas follow the leaders to catch up"))
