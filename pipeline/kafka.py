"""Thin factories over confluent-kafka with the settings this product depends on, explicit.

The values are chosen for the embedded broker and hold for Apache Kafka too (see DESIGN notes):
short session timeouts make a group join take ~3 s instead of ~23 s; a short fetch wait keeps
live latency near 10-30 ms. The producer's linger.ms (PRODUCER_LINGER_MS) trades latency
for batches: the embedded broker's CPU grows with the batches it answers and holds, so at high
rates fewer, larger batches keep it from owning a core (measured in docs/performance.md).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections import deque

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.config import Config

log = logging.getLogger(__name__)


def _common(cfg: Config, client_id: str, on_error=None, bootstrap: str | None = None) -> dict:
    return {
        "bootstrap.servers": bootstrap or cfg.bootstrap_servers,
        "client.id": client_id,
        # librdkafka logs every failed reconnect; error_cb summarizes them readably instead.
        "log_level": 2,
        "error_cb": on_error or ErrorSummary(client_id),
        **cfg.kafka_client_properties,  # KAFKA_CLIENT_CONFIG: SASL, TLS...
    }


class ErrorSummary:
    """A client's error_cb that logs state changes and counts, not one line per event.

    While a broker is down librdkafka reports every failed reconnect (hundreds a minute). This
    logs the first error of each kind at once, then one line per `interval` with how many more
    came, and one line when none has come for `quiet` seconds (librdkafka retries a broker at
    least every 10 s while it wants it, so a quiet spell means the connections came back, or
    the client stopped needing them). Fatal errors are always logged.
    """

    def __init__(self, name: str, interval: float = 10.0, quiet: float = 15.0, clock=time.monotonic):
        self.name, self.interval, self.quiet, self.clock = name, interval, quiet, clock
        self.kinds: set[int] = set()  # error codes seen in the current episode
        self.first = self.last = self.reported = 0.0
        self.total = self.pending = 0
        self.latest = ""
        with _lock:
            _summaries.add(self)
            _start_ticker()

    def __call__(self, err) -> None:
        now = self.clock()
        with _lock:
            if err.fatal():
                log.error("kafka %s: fatal: %s", self.name, err.str())
                return
            if not self.kinds:
                self.first = self.reported = now
                self.total = self.pending = 0
            self.last, self.latest, self.total = now, err.str(), self.total + 1
            if err.code() not in self.kinds:
                self.kinds.add(err.code())
                log.warning("kafka %s: %s", self.name, err.str())
            else:
                self.pending += 1

    def tick(self, now: float) -> None:
        with _lock:
            if not self.kinds:
                return
            if now - self.last >= self.quiet:
                log.info("kafka %s: no error for %.0f s; %d error(s) in the %.0f s before", self.name, self.quiet,
                         self.total, self.last - self.first)
                self.kinds.clear()
            elif self.pending and now - self.reported >= self.interval:
                log.warning("kafka %s: %d more error(s) in the last %.0f s, latest: %s", self.name, self.pending,
                            now - self.reported, self.latest)
                self.pending, self.reported = 0, now


_lock = threading.Lock()
_summaries: weakref.WeakSet[ErrorSummary] = weakref.WeakSet()


def _tick_all() -> None:
    while True:
        time.sleep(1.0)
        try:
            now = time.monotonic()
            # Copied under the lock: another thread's new client may add a summary meanwhile.
            with _lock:
                summaries = list(_summaries)
            for summary in summaries:
                summary.tick(now)
        except Exception:  # a failing tick must not end the summaries of every client
            log.exception("kafka error summaries: a tick failed")


_ticker: threading.Thread | None = None  # one thread serves every ErrorSummary


def _start_ticker() -> None:
    """Start the ticker unless it runs; called under _lock. A new thread each time it is
    needed: a thread can end under us (dash_duo ends its server's threads, any started from
    them included, with SystemExit), and a forked child inherits a stopped copy."""
    global _ticker
    if _ticker is None or not _ticker.is_alive():
        _ticker = threading.Thread(target=_tick_all, name="kafka-errors", daemon=True)
        _ticker.start()


def producer(cfg: Config, client_id: str, bootstrap: str | None = None, overrides: dict | None = None) -> Producer:
    """`bootstrap` overrides cfg.bootstrap_servers (a renewed embedded broker, see broker.py);
    `overrides` replaces any setting below."""
    return Producer(
        {
            **_common(cfg, client_id, bootstrap=bootstrap),
            "linger.ms": cfg.producer_linger_ms,
            "acks": "all",
            # Redelivered or re-sent readings are harmless: the store upserts on (ts, key) and the
            # dashboard drops points not newer than its last. Idempotence would add a fatal
            # UNKNOWN_PRODUCER_ID after an embedded-broker restart, and buy nothing here.
            "enable.idempotence": False,
            "message.timeout.ms": 120_000,
            **(overrides or {}),
        }
    )


def consumer(cfg: Config, group_id: str, client_id: str, *, offset_reset: str, on_error=None,
             bootstrap: str | None = None, overrides: dict | None = None) -> Consumer:
    """`bootstrap` overrides cfg.bootstrap_servers; `overrides` replaces any setting below."""
    return Consumer(
        {
            **_common(cfg, client_id, on_error, bootstrap),
            "group.id": group_id,
            "auto.offset.reset": offset_reset,
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 50,
            # librdkafka stops fetching for fetch.queue.backoff.ms (default 1000) each time its
            # prefetch queue is full: a writer catching up on a backlog idled up to 1 s at a time.
            "fetch.queue.backoff.ms": 20,
            **(overrides or {}),
        }
    )


def admin(cfg: Config) -> AdminClient:
    return AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 2, "error_cb": ErrorSummary("admin"), **cfg.kafka_client_properties})


def commit(consumer: Consumer, offsets: list[TopicPartition]) -> list[str]:
    """Commit `offsets` and wait; "topic/partition: error" for each partition whose commit
    failed (every partition's result is checked). Raises KafkaException if the request failed."""
    results = consumer.commit(offsets=offsets, asynchronous=False) or []
    return [f"{tp.topic}/{tp.partition}: {tp.error.str()}" for tp in results if tp.error is not None]


def group_progress(bootstrap: str, topic: str, group: str, timeout: float = 10) -> tuple[int, int]:
    """(committed, end): a group's committed offsets and the topic's end offsets, summed.

    The probe never subscribes, so it does not join (or disturb) the group.
    """
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 2})
    try:
        parts = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=timeout).topics[topic].partitions]
        end = sum(end_offsets(probe, parts, timeout).values())
        return sum(max(0, tp.offset) for tp in probe.committed(parts, timeout=timeout)), end
    finally:
        probe.close()


def end_offsets(probe: Consumer, parts: list[TopicPartition], timeout: float = 10) -> dict[int, int]:
    """Each partition's true end offset (one past its last message).

    Tansu answers a latest-offset query with the base offset of the partition's last record
    batch + 1, short of the end by the rest of that batch; so the last batch is read to find
    where it ends. (On Apache Kafka the read finds nothing past the watermark.) Uses `probe`'s
    assignment.
    """
    ends = {tp.partition: probe.get_watermark_offsets(tp, timeout=timeout, cached=False)[1] for tp in parts}
    pending = {p for p, hw in ends.items() if hw > 0}
    if not pending:
        return ends
    probe.assign([TopicPartition(parts[0].topic, p, ends[p] - 1) for p in pending])
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            for msg in probe.consume(1000, timeout=0.2):
                if msg.error() is None:
                    ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)
                    pending.discard(msg.partition())
    finally:
        probe.unassign()
    return ends


# The groups unique_group made in this process, newest last. The embedded broker's ListGroups
# leaves out groups that never committed (a dashboard's), so /pipeline asks for these by id.
created_groups: deque[str] = deque(maxlen=8)


def unique_group(prefix: str) -> str:
    """A consumer group of one process: each dashboard reads every message (pub/sub)."""
    group = f"{prefix}-{uuid.uuid4().hex[:12]}"
    created_groups.append(group)
    return group
