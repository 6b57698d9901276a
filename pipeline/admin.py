"""Topic admin: create the reading topics and their dead-letter topics when they are missing."""
from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from pipeline import kafka
from pipeline.alerts import ALERTS_TOPIC, WEBHOOK_DLQ
from pipeline.config import Config
from pipeline.schema import TOPICS

log = logging.getLogger("admin")


def topic_names() -> list[str]:
    return [n for spec in TOPICS.values() for n in (spec.name, spec.dlq)] + [ALERTS_TOPIC, WEBHOOK_DLQ]


def min_insync(replication: int) -> int:
    """min.insync.replicas for a topic of `replication` copies: 2 from three copies up, so that an
    acknowledged write (acks=all) is on two brokers and one broker may be down without stopping
    writes; 1 below that (one node, or two where a second copy required would stop writes with
    either broker down)."""
    return 2 if replication >= 3 else 1


def ensure_topics(cfg: Config, timeout: float = 15.0) -> list[str]:
    """Create missing topics; return the names created. Raises KafkaException if the broker is down."""
    client = kafka.admin(cfg)
    metadata = client.list_topics(timeout=timeout)
    brokers = len(metadata.brokers)
    replication = cfg.replication_factor or min(3, brokers)
    missing = [n for n in topic_names() if n not in metadata.topics]
    for name in topic_names():
        if name in metadata.topics and not name.endswith(".dlq"):
            have = len(metadata.topics[name].partitions)
            if have != cfg.partitions:
                log.warning("topic %s exists with %d partitions (PARTITIONS=%d); leaving it as it is", name, have, cfg.partitions)
    if not missing:
        log.info("all %d topics exist (%d broker%s)", len(topic_names()), brokers, "" if brokers == 1 else "s")
        return []
    # Set on the topic, not left to the brokers' default (1 unless configured): the guarantee
    # travels with the topic. A single node gets no topic config (the embedded broker as before).
    config = {"min.insync.replicas": str(min_insync(replication))} if replication > 1 else {}
    futures = client.create_topics(
        [NewTopic(n, num_partitions=cfg.partitions, replication_factor=replication, config=config) for n in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:  # another admin won the race
                raise
    log.info(
        "created %s with %d partitions, replication factor %d, min.insync.replicas %d (%d broker%s)",
        ", ".join(created) or "nothing", cfg.partitions, replication, min_insync(replication), brokers, "" if brokers == 1 else "s",
    )
    return created
