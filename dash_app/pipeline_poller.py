"""One poller per dashboard: what Kafka's admin API says about the pipeline, once a second.

It runs in a process of its own, started and restarted by dash_app/poller_process.py (never at
import, never per viewer); the /pipeline page only renders its latest snapshot. Its own process
because librdkafka (2.16.0) can abort a process whose admin requests are out when a broker dies
(`rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0'`, librdkafka #4605 and
#3663, open): it then takes only the poller, not the page serving the live charts. Each poll reads the broker's current address first (`run all` may have
renewed the embedded broker onto another port) and asks, in this order:

- metadata (`list_topics`): brokers, topics, each partition's leader, replicas and in-sync
  replicas. Embedded broker: one broker (node id 111 in our runs), leader = replicas = ISR = it,
  controller id = it. Correct for a single node.
- the cluster id and controller come with the metadata too (embedded: answered, the one node).
  Not `describe_cluster`: it waits for the controller, and timed out while a killed
  controller's successor was elected.
- `list_consumer_groups`: the group ids. Embedded: only groups that have committed offsets
  (a dashboard's group commits none, so it is left out even while it has members) and every
  state UNKNOWN; the poller adds this process's own dashboard group by id
  (its `kafka.created_groups`, which the dashboard reports with its feed's positions), and the state shown comes from the describe below.
- members: on Apache Kafka `describe_consumer_groups` (state, members with client id, host and
  assigned partitions). Embedded: that call answers STABLE with no members, so the classic
  DescribeGroups request is sent directly (dash_app/group_wire.py); it lists members by member id
  only, with no client id, host or assignment. Their partitions are then computed with the range
  assignor (librdkafka's default, which every consumer of this product uses): members sorted by
  id, each topic's partitions cut into contiguous ranges, the first `P mod M` members one more.
  The page labels them "computed"; tests/test_pipeline_page.py checks them against what the
  writers log as assigned.
- `list_consumer_group_offsets`, one group per call: committed offsets. Embedded: exact.
- `list_offsets` earliest / latest: low and high watermarks. Embedded: the low watermark is 0
  (nothing is ever deleted); the latest offset is the base offset of the partition's last record
  batch + 1, short of the true end by the rest of that batch. So the poller reads each changed
  partition's last batch (one fetch for all of them, from a consumer that never joins a group)
  to find the true end (pipeline/kafka.py `end_offsets` does the same); lag and rates use it.
  On Apache Kafka the latest offset is the true end and the read only confirms it. The same
  reads give the keys each partition carries and the dead letters with their headers.
- Not used: `describe_configs` (the embedded broker never answers it: 10 s timeout),
  `list_offsets` max_timestamp (embedded: offset -1001, i.e. none).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from dash_app import group_wire
from dash_app.replication_watch import ReplicationWatch
from pipeline import alerter
from pipeline.broker import current_address, read_address
from pipeline.config import Config
from pipeline.daemon import setup_logging
from pipeline.schema import TOPICS

log = logging.getLogger("dash_app.pipeline")
POLL_S = 1.0
HISTORY_S = 15 * 60
TIMEOUT_S = 2.0
READ_S = 0.5  # longest a poll waits for the last batches it reads
DEAD_KEEP = 10  # newest dead letters kept per topic
KEY_TTL_S = 300  # a key not seen in a partition for this long is dropped from its list
RATE_WINDOW_S = 5.0
WRITER_PREFIX = "store-writer."
DASHBOARD_PREFIX = "dashboard-"


def group_topics(group_id: str, feed_topics: list[str]) -> list[str] | None:
    """The topics a group of this product subscribes to (None: not one of ours); a dashboard's
    are `feed_topics` (dash_app/live.py's, passed on by the dashboard: importing that module
    would make a new poller process seconds slower to start)."""
    if group_id.startswith(WRITER_PREFIX) and group_id[len(WRITER_PREFIX):] in TOPICS:
        return [group_id[len(WRITER_PREFIX):]]
    if group_id.startswith(DASHBOARD_PREFIX):
        return list(feed_topics)
    if group_id == alerter.GROUP:
        return alerter.topics()
    return None


def range_assign(member_ids: list[str], partitions: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    """librdkafka's range assignor for members that all subscribe to `partitions`' topics."""
    members = sorted(member_ids)
    out: dict[str, list[tuple[str, int]]] = {m: [] for m in members}
    if not members:
        return out
    for topic in sorted(partitions):
        count = partitions[topic]
        each, extra = divmod(count, len(members))
        for i, member in enumerate(members):
            start = each * i + min(i, extra)
            out[member] += [(topic, p) for p in range(start, start + each + (1 if i < extra else 0))]
    return out


def _offsets(futures: dict, known: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Each partition's offset from list_offsets; one that fails keeps what is `known` (else 0).

    Right after a leader moves, the new leader answers OFFSET_NOT_AVAILABLE ("leader high
    watermark is not caught up") for a moment: one partition's answer must not fail the poll,
    or the page would call the whole cluster unreachable just when it has the most to show."""
    out = {}
    for tp, future in futures.items():
        key = (tp.topic, tp.partition)
        try:
            out[key] = future.result().offset
        except KafkaException:
            out[key] = known.get(key, 0)
    return out


@dataclass
class FeedNote:
    """What the dashboard's live feed last reported to the poller process."""

    group: str = ""
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)  # dashboard groups its process created
    topics: list[str] = field(default_factory=list)  # what the feed reads


def main(fd: int) -> None:
    """The poller process (dash_app/poller_process.py starts it): the dashboard's end of the
    connection is file descriptor `fd`; its first message is the settings and the snapshot to
    carry on from."""
    conn = Connection(fd)
    try:
        cfg, seed = conn.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        return
    serve(cfg, conn, seed)


def serve(cfg: Config, conn, seed: dict) -> None:
    """Polls every `POLL_S`, sends each snapshot up `conn`, takes FeedNotes from it, and ends
    when the dashboard closes its end (or dies: the kernel ends this process then)."""
    setup_logging(cfg.log_level)
    poller = Poller(cfg, conn.send)
    poller.restore(seed)
    try:
        while True:
            started = time.monotonic()
            poller.step()
            while conn.poll(max(0.05, poller.interval - (time.monotonic() - started))):
                poller.feed = conn.recv()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        poller._close_clients()


class Poller:
    """The polls and what they remember (lag history, events, dead letters, replication).

    Runs in a process of its own (`serve`, started by dash_app/poller_process.py): every snapshot
    goes to `publish`. `feed` carries the dashboard's live feed as last reported: its group (which
    commits nothing: its lag is end - its position), its positions and the dashboard groups its
    process created."""

    def __init__(self, cfg: Config, publish, feed: FeedNote | None = None, interval: float = POLL_S):
        self.cfg, self.publish, self.interval = cfg, publish, interval
        self.feed = feed or FeedNote()
        self.snapshot: dict[str, Any] = {"ok": None, "t": 0, "address": "", "error": "first poll pending"}
        self.address: str | None = None
        self.admin: AdminClient | None = None
        self.probe: Consumer | None = None
        self.lag_history: dict[str, deque] = {}
        self.events: deque = deque()  # (t_ms, group or "", text)
        self.dead: dict[str, deque] = {}  # source topic -> newest dead letters
        self.replication = ReplicationWatch(HISTORY_S)
        self._reset_partitions()

    def _reset_partitions(self) -> None:
        self.ends: dict[tuple[str, int], int] = {}  # true end offsets found so far
        self.keys: dict[tuple[str, int], dict[str, float]] = {}
        self.end_samples: deque = deque()  # (monotonic, {topic: total})
        self.members_seen: dict[str, tuple] = {}

    def restore(self, snapshot: dict) -> None:
        """Carry on from a snapshot of the poller process before this one (which died): its
        timeline, lag history, dead letters and the ends it had read, so that nothing is shown twice
        and the next poll's changes (a leader moved meanwhile) are still events."""
        if not snapshot.get("partitions"):
            return
        self.snapshot = snapshot
        self.events = deque(snapshot["events"])
        self.lag_history = {g: deque(h) for g, h in snapshot["lag_history"].items()}
        self.dead = {t: deque(letters, maxlen=DEAD_KEEP) for t, letters in snapshot["dead"].items()}
        self.ends = {(p["topic"], p["partition"]): p["high"] for p in snapshot["partitions"]}
        self.replication.restore(snapshot["replication"], snapshot["partitions"])

    def step(self) -> None:
        """One poll, published; a failure is published as the page shows it."""
        started, cpu = time.monotonic(), time.process_time()
        try:
            snap = self.poll()
        except Exception as exc:  # noqa: BLE001 - the page shows any failure; the poller keeps polling
            snap = self._failed(exc)
        snap["poll_ms"] = round((time.monotonic() - started) * 1000)
        snap["cpu_ms"] = round((time.process_time() - cpu) * 1000, 1)
        self.snapshot = snap
        self.publish(snap)

    def _failed(self, exc: Exception) -> dict:
        prev = self.snapshot
        if prev.get("ok"):
            log.warning("pipeline poller: broker unreachable at %s: %s", self.address, exc)
            self._close_clients()  # fresh clients on the next poll
        return {**prev, "ok": False, "t": int(time.time() * 1000), "error": str(exc) or type(exc).__name__,
                "stale_since": prev.get("stale_since") or prev.get("t")}

    def _close_clients(self) -> None:
        if self.probe is not None:
            try:
                self.probe.close()
            except RuntimeError:
                pass
        self.admin = self.probe = None

    def _connect(self, address: str) -> None:
        now = int(time.time() * 1000)
        if self.address is not None and address != self.address:
            self.events.append((now, "", f"broker renewed: now {address}"))
            self._reset_partitions()
            self.replication.reset()
        self._close_clients()
        self.address = address
        # Connection failures show on the page (broker panel): no error_cb summary lines needed.
        common = {"bootstrap.servers": address, "log_level": 2, "error_cb": lambda _err: None, **self.cfg.kafka_client_properties}
        # Known risk: as a broker died, librdkafka 2.16.0 aborted this process in three of six
        # runs with admin calls in flight (rd_kafka_enq_once_del_source_return: eonce->refcnt > 0;
        # librdkafka issues #4605 and #3663, open). docs/performance.md, Replication.
        self.admin = AdminClient(common)
        # Reads last batches and dead letters by assign(): it never joins or commits to a group.
        self.probe = Consumer({**common, "group.id": "pipeline-page-probe", "client.id": "dashboard-pipeline",
                               "enable.auto.commit": False, "fetch.wait.max.ms": 100, "enable.partition.eof": False})

    # -- one poll ----------------------------------------------------------------------------

    def poll(self) -> dict:
        address = current_address(self.cfg)
        if address != self.address or self.admin is None:
            self._connect(address)
        admin, now = self.admin, int(time.time() * 1000)
        md = admin.list_topics(timeout=TIMEOUT_S)
        replication = self._publish_replicas(now, md)
        listed = admin.list_consumer_groups(request_timeout=TIMEOUT_S)
        topics = {name: t for name, t in md.topics.items() if not name.startswith("__")}
        parts = [TopicPartition(name, p) for name, t in topics.items() for p in t.partitions]
        latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=TIMEOUT_S) if parts else {}
        earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in parts}, request_timeout=TIMEOUT_S) if parts else {}
        listed_ids = {g.group_id for g in listed.result().valid}
        group_ids = sorted(listed_ids | set(self.feed.groups))
        groups = self._groups(group_ids, {n: len(t.partitions) for n, t in topics.items()})
        # Committed offsets before end offsets: a commit can then never pass the end it is compared with.
        committed = self._committed(group_ids)
        reported = _offsets(latest, self.ends)
        low = _offsets(earliest, {})
        self._read_tails(reported, low)
        # self.ends holds only ends read from a partition: taking the reported one as read would
        # skip a partition whose tail read READ_S cut short (a busy broker), for good.
        ends = {tp: max(hw, self.ends.get(tp, 0)) for tp, hw in reported.items()}

        partitions = []
        for name, t in sorted(topics.items()):
            for p, pm in sorted(t.partitions.items()):
                tp = (name, p)
                keys = self.keys.get(tp, {})
                partitions.append({
                    "topic": name, "partition": p, "leader": pm.leader, "replicas": list(pm.replicas),
                    "isr": list(pm.isrs), "low": low.get(tp, 0), "high": ends.get(tp, 0),
                    "reported_high": reported.get(tp, 0), "keys": sorted(keys),
                    "error": str(pm.error) if pm.error else None,
                })
        totals = {name: sum(ends.get((name, p), 0) for p in t.partitions) for name, t in topics.items()}
        rates = self._rates(totals)
        topic_rows = [{"name": name, "partitions": len(t.partitions),
                       "replication": max((len(pm.replicas) for pm in t.partitions.values()), default=0),
                       "total": totals[name], "rate": rates.get(name), "dlq": name.endswith(".dlq")}
                      for name, t in sorted(topics.items())]

        own, positions = self.feed.group, self.feed.positions
        for g in groups:
            done = committed.get(g["id"], {})
            if g["id"] == own and not done:  # this process's live feed: where it has read to
                g["lag_from"], done = "position", positions
                lag = {tp: max(0, end - positions[tp]) for tp, end in ends.items() if tp in positions}
            else:
                g["lag_from"], lag = "committed", self._lag(g["id"], done, ends, low)
            g["offsets"] = [{"topic": t, "partition": p, "committed": done.get((t, p)),
                             "end": ends.get((t, p), 0), "lag": n} for (t, p), n in sorted((lag or {}).items())]
            g["total_lag"] = None if lag is None else sum(lag.values())
            self._note_members(now, g)
        self._trim(now)
        record = read_address(self.cfg) if self.cfg.embedded_broker else None
        return {
            "ok": True, "t": now, "address": self.address, "embedded": self.cfg.embedded_broker,
            "generation": record.get("generation") if record else None,
            "cluster_id": md.cluster_id, "controller": md.controller_id, "replication": replication,
            "brokers": sorted(f"{b.id} {b.host}:{b.port}" for b in md.brokers.values()),
            "topics": topic_rows, "partitions": partitions, "groups": groups,
            "dead": {topic: list(letters) for topic, letters in self.dead.items()},
            "lag_history": {g: list(h) for g, h in self.lag_history.items()},
            "events": list(self.events),
        }

    def _publish_replicas(self, now: int, md) -> dict:
        """Leaders and in-sync sets as soon as the metadata answers, in the latest snapshot.

        The rest of a poll asks each partition's leader and each group's coordinator: when a
        broker has just died those requests wait out their timeouts (2.4 s polls, measured), and
        the page would show leaders moving seconds after the metadata did."""
        rows = [{"topic": name, "partition": p, "leader": pm.leader, "replicas": list(pm.replicas), "isr": list(pm.isrs)}
                for name, t in sorted(md.topics.items()) if not name.startswith("__") for p, pm in sorted(t.partitions.items())]
        replication = self.replication.observe(now, {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}, rows, md.controller_id)
        if self.snapshot.get("ok"):
            fresh = {(r["topic"], r["partition"]): r for r in rows}
            partitions = [{**p, **fresh.get((p["topic"], p["partition"]), {})} for p in self.snapshot["partitions"]]
            self.snapshot = {**self.snapshot, "partitions": partitions, "replication": replication}
            self.publish(self.snapshot)
        return replication

    def _groups(self, group_ids: list[str], partition_counts: dict[str, int]) -> list[dict]:
        if not group_ids:
            return []
        out = []
        if self.cfg.embedded_broker:
            for g in group_wire.describe_groups(self.address, group_ids, TIMEOUT_S):
                subscribed = group_topics(g.group_id, self.feed.topics)
                reported = any(m.assignment for m in g.members)
                computed = {}
                if not reported and subscribed is not None and g.state == "Stable":
                    computed = range_assign([m.member_id for m in g.members],
                                            {t: partition_counts.get(t, 0) for t in subscribed})
                out.append({
                    "id": g.group_id, "state": g.state, "source": "reported" if reported else "computed",
                    "members": [{
                        "member_id": m.member_id, "client_id": m.client_id, "host": m.host or None,
                        "partitions": sorted((t, p) for t, ps in m.assignment.items() for p in ps)
                        if reported else computed.get(m.member_id, []),
                    } for m in sorted(g.members, key=lambda m: m.member_id)],
                })
            return out
        for group_id, future in self.admin.describe_consumer_groups(group_ids, request_timeout=TIMEOUT_S).items():
            try:
                d = future.result()
            except KafkaException as exc:
                out.append({"id": group_id, "state": f"error: {exc}", "source": "reported", "members": []})
                continue
            out.append({
                "id": group_id, "state": d.state.name.title().replace("_", ""), "source": "reported",
                "members": [{
                    "member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                    "partitions": sorted((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])),
                } for m in sorted(d.members, key=lambda m: m.member_id)],
            })
        return sorted(out, key=lambda g: g["id"])

    def _committed(self, group_ids: list[str]) -> dict[str, dict[tuple[str, int], int]]:
        futures = {g: self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)], request_timeout=TIMEOUT_S)[g]
                   for g in group_ids}
        out = {}
        for g, f in futures.items():
            try:
                out[g] = {(tp.topic, tp.partition): tp.offset for tp in f.result().topic_partitions
                          if tp.offset >= 0 and tp.error is None}
            except KafkaException:
                out[g] = {}
        return out

    def _lag(self, group_id: str, committed: dict, ends: dict, low: dict) -> dict | None:
        """Per partition end - committed; a partition never committed counts from its low watermark.

        None for a group that commits nothing (a dashboard: its position lives in its process)."""
        subscribed = group_topics(group_id, self.feed.topics) or sorted({t for t, _ in committed})
        if not committed:
            return None
        lag = {}
        for tp, end in ends.items():
            if tp[0] in subscribed:
                lag[tp] = max(0, end - committed.get(tp, low.get(tp, 0)))
        return lag

    def _note_members(self, now: int, g: dict) -> None:
        # Only settled states count: mid-rebalance the embedded broker says "Unknown", Kafka
        # "PreparingRebalance" or "CompletingRebalance", and no assignment is final yet.
        if g["state"] in ("Stable", "Empty"):
            members = tuple((m["member_id"], tuple(m["partitions"])) for m in g["members"])
            before = self.members_seen.get(g["id"])
            if before is not None and before != members:
                self.events.append((now, g["id"], f"{g['id']}: {len(before)} → {len(members)} member(s)"))
            self.members_seen[g["id"]] = members
        if g["total_lag"] is not None:
            self.lag_history.setdefault(g["id"], deque()).append((now, g["total_lag"]))

    def _trim(self, now: int) -> None:
        oldest = now - HISTORY_S * 1000
        for history in self.lag_history.values():
            while history and history[0][0] < oldest:
                history.popleft()
        for g in [g for g, h in self.lag_history.items() if not h]:
            del self.lag_history[g]
        while self.events and self.events[0][0] < oldest:
            self.events.popleft()
        horizon = time.monotonic() - KEY_TTL_S
        for keys in self.keys.values():
            for key in [k for k, seen in keys.items() if seen < horizon]:
                del keys[key]

    def _rates(self, totals: dict[str, int]) -> dict[str, float]:
        mono = time.monotonic()
        self.end_samples.append((mono, totals))
        while len(self.end_samples) > 2 and mono - self.end_samples[1][0] >= RATE_WINDOW_S:
            self.end_samples.popleft()
        then, old = self.end_samples[0]
        if mono - then < 0.5:
            return {}
        return {t: max(0.0, (n - old.get(t, n)) / (mono - then)) for t, n in totals.items()}

    # -- reading last batches and dead letters ----------------------------------------------

    def _read_tails(self, reported: dict[tuple[str, int], int], low: dict[tuple[str, int], int]) -> None:
        """Read each partition that grew: its last batch (true end, keys) or, for a .dlq, what is new."""
        starts, targets = {}, {}
        for tp, hw in reported.items():
            known = self.ends.get(tp)
            if hw <= 0 or (known is not None and hw <= known):
                continue
            if tp[0].endswith(".dlq"):
                starts[tp] = known if known is not None else max(low.get(tp, 0), hw - DEAD_KEEP)
            else:
                starts[tp] = hw - 1
            targets[tp] = hw - 1
        if not starts:
            return
        self.probe.assign([TopicPartition(t, p, off) for (t, p), off in starts.items()])
        pending = set(starts)
        deadline = time.monotonic() + READ_S
        try:
            while time.monotonic() < deadline:
                messages = self.probe.consume(1000, timeout=0.05 if pending else 0)
                if not messages and not pending:
                    break
                for msg in messages:
                    if msg.error() is not None:
                        continue
                    tp = (msg.topic(), msg.partition())
                    self.ends[tp] = max(self.ends.get(tp, 0), msg.offset() + 1)
                    if msg.offset() >= targets.get(tp, 0):
                        pending.discard(tp)
                    if tp[0].endswith(".dlq"):
                        self._dead_letter(msg)
                    elif msg.key() is not None:
                        self.keys.setdefault(tp, {})[msg.key().decode("utf-8", "replace")] = time.monotonic()
        finally:
            self.probe.unassign()

    def _dead_letter(self, msg) -> None:
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        topic = msg.topic()[: -len(".dlq")]
        value = (msg.value() or b"").decode("utf-8", "replace")
        self.dead.setdefault(topic, deque(maxlen=DEAD_KEEP)).append({
            "time": msg.timestamp()[1], "error": headers.get("error", "(no error header)"),
            "source": headers.get("source", ""), "key": (msg.key() or b"").decode("utf-8", "replace"),
            "value": value[:120] + ("…" if len(value) > 120 else ""), "at": f"{msg.topic()}/{msg.partition()}@{msg.offset()}",
        })
