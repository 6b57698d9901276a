"""The live path: a Kafka consumer thread -> a ring buffer with a cursor -> websocket frames.

The dashboard process reads every reading in a consumer group of its own (pub/sub). On each
assignment it seeks by time: to just before the process started, or after a broker restart to
the last point it saw, so no reading falls between the store and the ring. Each point gets a sequence number; a client asks for everything after its
cursor, so a dropped frame or connection is repaired by reconnecting from that cursor. The
cursor carries the ring's epoch (one per process): after a restart, an old cursor means
"reload history", never a silent hole.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, TopicPartition

from pipeline import kafka
from pipeline.config import Config
from pipeline.schema import TOPICS, InvalidMessage, validate

log = logging.getLogger("dash_app.live")
HEARTBEAT_S = 1.0  # idle connections still get a frame this often: it carries the status
START_MARGIN_MS = 10_000  # the ring starts this long before the process did


class Gap(Exception):
    """The client's cursor is older than the ring or from another process: reload history."""


class Ring:
    """The newest points of every topic, numbered 1, 2, 3... within this process's epoch."""

    def __init__(self, size: int):
        self.epoch = uuid.uuid4().hex[:8]
        self.points: deque[tuple[int, str, list]] = deque(maxlen=size)
        self.head = 0
        self.changed = threading.Condition()

    def extend(self, topic_rows: list[tuple[str, list]]) -> None:
        with self.changed:
            for topic, row in topic_rows:
                self.head += 1
                self.points.append((self.head, topic, row))
            self.changed.notify_all()

    def cursor(self) -> str:
        return f"{self.epoch}:{self.head}"

    def parse(self, cursor: str) -> int:
        epoch, _, seq = cursor.partition(":")
        if epoch != self.epoch or not seq.isdigit():
            raise Gap(f"cursor {cursor!r} is not from this dashboard process")
        return int(seq)

    def wait(self, seq: int, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.head > seq, timeout)

    def since(self, seq: int) -> tuple[dict[str, list], int]:
        """Rows after `seq`, grouped by topic, and the new cursor position."""
        with self.changed:
            head = self.head
            if head == seq:
                return {}, seq
            oldest = self.points[0][0] if self.points else head + 1
            if seq < oldest - 1 or seq > head:
                raise Gap(f"points after {seq} are no longer in the ring (oldest {oldest})")
            start = len(self.points) - (head - seq)
            picked = [self.points[i] for i in range(start, len(self.points))]
        rows: dict[str, list] = {}
        for _, topic, row in picked:
            rows.setdefault(topic, []).append(row)
        return rows, head

    def snapshot(self) -> tuple[dict[str, list], int]:
        """Every row in the ring and the cursor position it ends at."""
        with self.changed:
            seq = self.points[0][0] - 1 if self.points else self.head
        return self.since(seq)


class Health:
    """What the status badge shows: can this process reach the broker and the store?"""

    def __init__(self):
        self.broker_ok = True
        self.store_ok = True

    def as_dict(self) -> dict[str, bool]:
        return {"broker": self.broker_ok, "store": self.store_ok}


def row_of(spec, reading) -> list:
    """A reading as the frame row the page expects (spec.series_columns)."""
    return [getattr(reading, c) for c in spec.series_columns]


class LiveFeed(threading.Thread):
    """Consumes every topic from the latest offsets into the ring."""

    def __init__(self, cfg: Config, ring: Ring, health: Health):
        super().__init__(name="live-feed", daemon=True)
        self.cfg, self.ring, self.health = cfg, ring, health
        self.stopping = threading.Event()
        self.ready = threading.Event()  # set once the first assignment is positioned
        self.resume_ms = int(time.time() * 1000) - START_MARGIN_MS
        self.skipped = 0  # invalid messages: the store writers dead-letter them, we just skip

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            if self.health.broker_ok:
                log.warning("broker unreachable: %s", err.str())
            self.health.broker_ok = False

    def run(self) -> None:
        consumer = kafka.consumer(
            self.cfg, kafka.unique_group("dashboard"), "dashboard-live", offset_reset="latest", on_error=self._on_error
        )
        consumer.subscribe(list(TOPICS), on_assign=self._on_assign)
        log.info("live feed consuming %s from %s", ", ".join(TOPICS), self.cfg.bootstrap_servers)
        last_check = 0.0
        try:
            while not self.stopping.is_set():
                batch = []
                for msg in consumer.consume(num_messages=1000, timeout=0.05):
                    if msg.error():
                        continue
                    spec = TOPICS[msg.topic()]
                    try:
                        reading = validate(spec, msg.value(), msg.key(), int(time.time() * 1000))
                    except InvalidMessage:
                        self.skipped += 1
                        continue
                    batch.append((spec.name, row_of(spec, reading)))
                    self.resume_ms = max(self.resume_ms, reading.ts)
                if batch:
                    self.ring.extend(batch)
                    self.health.broker_ok = True
                elif time.monotonic() - last_check > 2.0:
                    last_check = time.monotonic()
                    self._check_broker(consumer)
        finally:
            consumer.close()

    def _on_assign(self, consumer, partitions) -> None:
        try:
            found = consumer.offsets_for_times([TopicPartition(p.topic, p.partition, self.resume_ms) for p in partitions], timeout=5)
            for p, f in zip(partitions, found):
                p.offset = f.offset if f.offset >= 0 else OFFSET_END  # -1: nothing that recent yet
        except KafkaException as exc:
            log.warning("cannot seek to %d (%s); reading from the latest offsets", self.resume_ms, exc)
            for p in partitions:
                p.offset = OFFSET_END
        consumer.assign(partitions)
        log.info("live feed assigned %d partitions from %s", len(partitions), time.strftime("%H:%M:%S", time.gmtime(self.resume_ms / 1000)))
        self.ready.set()

    def _check_broker(self, consumer) -> None:
        try:
            consumer.list_topics(timeout=1.0)
            if not self.health.broker_ok:
                log.info("broker reachable again")
            self.health.broker_ok = True
        except Exception as exc:  # KafkaException: no broker answered in time
            if self.health.broker_ok:
                log.warning("broker unreachable: %s", exc)
            self.health.broker_ok = False

    def stop(self) -> None:
        self.stopping.set()


def serve_frames(ws, ring: Ring, health: Health, since: str | None, frame_s: float) -> None:
    """Push frames to one websocket until it closes.

    A point is sent at once when no frame went out in the last `frame_s`; while one did, points
    wait and share the next frame. Each frame says which cursor span it covers, so the page can
    tell a lost frame from a late one.
    """
    number, last_sent = 0, 0.0
    try:
        seq = ring.parse(since) if since else ring.head
    except Gap as exc:
        ws.send(json.dumps({"reset": str(exc)}))
        return
    while True:
        ring.wait(seq, HEARTBEAT_S)
        pause = frame_s - (time.monotonic() - last_sent)
        if pause > 0:
            time.sleep(pause)
        try:
            rows, head = ring.since(seq)
        except Gap as exc:
            ws.send(json.dumps({"reset": str(exc)}))
            return
        number += 1
        frame: dict[str, Any] = {"n": number, "from": f"{ring.epoch}:{seq}", "to": f"{ring.epoch}:{head}", "rows": rows, "status": health.as_dict()}
        ws.send(json.dumps(frame))
        seq, last_sent = head, time.monotonic()
