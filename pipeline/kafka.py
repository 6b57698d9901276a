"""Thin factories over confluent-kafka with the settings this product depends on, explicit.

The values are chosen for the embedded broker and hold for Apache Kafka too (see DESIGN notes):
short session timeouts make a group join take ~3 s instead of ~23 s; a short fetch wait keeps
live latency near 10-30 ms; linger.ms=5 batches producer sends so consumers keep up.
"""
from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, Producer
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
            "linger.ms": 5,
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


def unique_group(prefix: str) -> str:
    """A consumer group of one process: each dashboard reads every message (pub/sub)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
