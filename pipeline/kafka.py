"""Thin factories over confluent-kafka with the settings this product depends on, explicit.

The values are chosen for the embedded broker and hold for Apache Kafka too (see DESIGN notes):
short session timeouts make a group join take ~3 s instead of ~23 s; a short fetch wait keeps
live latency near 10-30 ms. The producer's linger.ms (PRODUCER_LINGER_MS, 20) trades latency
for batches: the embedded broker's CPU grows with the number of batches it holds. At 5,000 msg/s
it reached half a core after 40 s with 5 ms, a quarter of a core after 60 s with 20 ms; 20 ms adds
~13 ms at low rates (bench/e2e_latency: p50 41 ms at 100 points/s).
"""
from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.config import Config

log = logging.getLogger(__name__)


def _common(cfg: Config, client_id: str, on_error=None) -> dict:
    return {
        "bootstrap.servers": cfg.bootstrap_servers,
        "client.id": client_id,
        # librdkafka logs every failed reconnect; error_cb reports them once, readably, instead.
        "log_level": 2,
        "error_cb": on_error or _log_error,
    }


def _log_error(err) -> None:
    log.warning("kafka: %s", err.str())


def producer(cfg: Config, client_id: str) -> Producer:
    return Producer(
        {
            **_common(cfg, client_id),
            "linger.ms": cfg.producer_linger_ms,
            "acks": "all",
            # Redelivered or re-sent readings are harmless: the store upserts on (ts, key) and the
            # dashboard drops points not newer than its last. Idempotence would add a fatal
            # UNKNOWN_PRODUCER_ID after an embedded-broker restart, and buy nothing here.
            "enable.idempotence": False,
            "message.timeout.ms": 120_000,
        }
    )


def consumer(cfg: Config, group_id: str, client_id: str, *, offset_reset: str, on_error=None) -> Consumer:
    return Consumer(
        {
            **_common(cfg, client_id, on_error),
            "group.id": group_id,
            "auto.offset.reset": offset_reset,
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 50,
            # librdkafka stops fetching for fetch.queue.backoff.ms (default 1000) each time its
            # prefetch queue is full: a writer catching up on a backlog idled up to 1 s at a time.
            "fetch.queue.backoff.ms": 20,
        }
    )


def admin(cfg: Config) -> AdminClient:
    return AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 2, "error_cb": _log_error})


def group_progress(bootstrap: str, topic: str, group: str, timeout: float = 10) -> tuple[int, int]:
    """(committed, end): a group's committed offsets and the topic's high watermarks, summed.

    The probe never subscribes, so it does not join (or disturb) the group.
    """
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 2})
    try:
        parts = [TopicPartition(topic, p) for p in probe.list_topics(topic, timeout=timeout).topics[topic].partitions]
        end = sum(probe.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts)
        return sum(max(0, tp.offset) for tp in probe.committed(parts, timeout=timeout)), end
    finally:
        probe.close()


def unique_group(prefix: str) -> str:
    """A consumer group of one process: each dashboard reads every message (pub/sub)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
