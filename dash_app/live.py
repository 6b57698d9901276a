"""The live path: a Kafka consumer thread -> a ring buffer with a cursor -> websocket frames.

The dashboard process reads every reading in a consumer group of its own (pub/sub). On each
assignment it seeks by time: to just before the process started, or after a broker restart to
the last point it saw, so no reading falls between the store and the ring. Each point gets a
sequence number; a page asks for everything after its cursor, so a dropped connection is
repaired by reconnecting from that cursor. The cursor carries the ring's epoch (one per
process): after a restart, an old cursor means "reload history", never a silent hole.

The feed also reads the alerter's `alerts` topic: each change of an alert's state takes its
place in the ring like a reading, so it reaches the page in the next frame (the alerts panel,
the cards, the bands on the charts) with the same cursor, reconnect and no-hole guarantees.
"""
from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections import deque
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition
from simple_websocket import ConnectionClosed

from dash_app.figures import envelope_ends, envelope_id, series_id
from pipeline import kafka
from pipeline.alerts import ALERTS_TOPIC, Alert, decode
from pipeline.broker import current_address
from pipeline.config import Config
from pipeline.schema import TOPICS, validate_batch

log = logging.getLogger("dash_app.live")
HEARTBEAT_S = 1.0  # idle connections still get a frame this often: it carries the status
ACK_TIMEOUT_S = 60  # a page that has not answered a frame for this long is gone
START_MARGIN_MS = 10_000  # the ring starts this long before the process did
SEEK_RETRY_S = 5.0  # how long a new assignment retries finding its resume offsets
# How long the feed keeps taking messages after the first: a producer's tick reaches the broker
# one partition at a time (librdkafka sends a request per partition), a millisecond or two apart,
# and a frame that carries only part of a tick makes the rest wait until that frame is drawn.
GATHER_S = 0.003
FEED_TOPICS = [*TOPICS, ALERTS_TOPIC]


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
        if epoch != self.epoch or not (seq.isdigit() and len(seq) <= 18):
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
            # From the right end: indexing a deque walks it from an end, so picking by index
            # cost time quadratic in the points picked (seconds, under the lock, at high rates).
            picked = list(itertools.islice(reversed(self.points), head - seq))
        rows: dict[str, list] = {}
        for _, topic, row in reversed(picked):
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


class LiveFeed(threading.Thread):
    """Consumes every topic into the ring, following the embedded broker when it is renewed.

    `run all` renews the embedded broker now and then (pipeline/supervisor.py): a new one starts
    beside the old, producers move to it, and RUN_DIR/broker.address names it. The feed then
    reads the new broker from its beginning (it holds only readings since the renewal) while it
    finishes the old one for DRAIN_S; points seen twice are harmless (see Buckets). Joining its
    group on the new broker takes seconds (DESIGN.md), so until it has, a bridge consumer reads
    the new broker's partitions by assign(), and the group takes over from the bridge's positions.
    """

    FOLLOW_S = 0.5  # how often the feed notes its positions and looks for a renewed broker
    DRAIN_S = 3.0  # how long it keeps reading the broker it left

    def __init__(self, cfg: Config, ring: Ring, health: Health):
        super().__init__(name="live-feed", daemon=True)
        self.cfg, self.ring, self.health = cfg, ring, health
        self.stopping = threading.Event()
        self.ready = threading.Event()  # set once the first assignment is positioned
        self.resume_ms = int(time.time() * 1000) - START_MARGIN_MS
        self.skipped = 0  # invalid messages: the store writers dead-letter them, we just skip
        self.bridge = None  # reads a renewed broker until the feed's group there is assigned
        # The group it reads in and its next offset per (topic, partition): this group commits
        # nothing, so its lag (on /pipeline and in the benchmark) is measured from these.
        self.group, self.positions = "", {}

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            if self.health.broker_ok:
                log.warning("broker unreachable: %s", err.str())
            self.health.broker_ok = False

    def _consumer(self, group: str, address: str, offset_reset: str):
        return kafka.consumer(
            self.cfg, group, "dashboard-live", offset_reset=offset_reset, on_error=self._on_error, bootstrap=address,
            # The embedded broker answers an empty fetch only when part of its wait has passed,
            # not when data arrives: 20 ms gave p50 7 / max 14 ms broker to feed, 50 ms p50 19 / max 29.
            overrides={"fetch.wait.max.ms": 20},
        )

    def _subscribe(self, address: str, from_start: bool):
        self.group, self.positions = kafka.unique_group("dashboard"), {}
        consumer = self._consumer(self.group, address, "earliest" if from_start else "latest")
        consumer.subscribe(FEED_TOPICS, on_assign=lambda c, parts: self._on_assign(c, parts, from_start))
        log.info("live feed consuming %s from %s", ", ".join(FEED_TOPICS), address)
        return consumer

    def _open_bridge(self, address: str) -> None:
        """Read a renewed broker's partitions from the beginning at once (assign() needs no join)."""
        bridge = self._consumer("dashboard-bridge", address, "earliest")  # never joins nor commits
        try:
            topics = bridge.list_topics(timeout=2).topics
            bridge.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in FEED_TOPICS if t in topics for p in topics[t].partitions])
            self.bridge = bridge
        except KafkaException as exc:
            log.warning("cannot read %s before the live feed's group joins it (%s)", address, exc)
            bridge.close()

    def _close_bridge(self) -> dict[tuple[str, int], int]:
        """Close the bridge; where it got to in each partition (the next offset to read)."""
        if self.bridge is None:
            return {}
        try:
            done = {(p.topic, p.partition): p.offset for p in self.bridge.position(self.bridge.assignment()) if p.offset >= 0}
        except KafkaException:
            done = {}
        self.bridge.close()
        self.bridge = None
        return done

    def run(self) -> None:
        address = current_address(self.cfg)
        consumer = self._subscribe(address, from_start=False)
        leaving: list = []  # (consumer, until) of brokers left behind, read until drained
        last_check = last_follow = 0.0
        try:
            while not self.stopping.is_set():
                # Block for the first message, then take what arrives within GATHER_S: a lone
                # tick goes on whole and at once instead of waiting out a batch timeout.
                first = consumer.poll(0.02 if leaving else 0.1)
                messages = [first, *consumer.consume(num_messages=10_000, timeout=GATHER_S)] if first else []
                for other in [*(old for old, _ in leaving), *([self.bridge] if self.bridge else [])]:
                    messages += other.consume(num_messages=10_000, timeout=0)
                batch = self._rows(messages)
                if batch:
                    self.ring.extend(batch)
                    self.health.broker_ok = True
                elif time.monotonic() - last_check > 2.0:
                    last_check = time.monotonic()
                    self._check_broker(consumer)
                for old, until in [x for x in leaving if x[1] < time.monotonic()]:
                    old.close()
                    leaving.remove((old, until))
                if time.monotonic() - last_follow > self.FOLLOW_S:
                    last_follow = time.monotonic()
                    self._note_positions(consumer)
                    renewed = current_address(self.cfg) if self.cfg.embedded_broker else address
                    if renewed != address:
                        log.info("the embedded broker moved to %s; following it", renewed)
                        leaving.append((consumer, time.monotonic() + self.DRAIN_S))
                        self._close_bridge()  # of a broker renewed again before the group joined it
                        self._open_bridge(renewed)
                        address, consumer = renewed, self._subscribe(renewed, from_start=True)
        finally:
            self._close_bridge()
            for c in [consumer, *(old for old, _ in leaving)]:
                c.close()

    def _note_positions(self, consumer) -> None:
        """Where the feed's group is in each partition (a local call: no request to the broker)."""
        try:
            self.positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(consumer.assignment()) if tp.offset >= 0}
        except KafkaException:
            pass  # not assigned yet, or rebalancing: the last positions stand

    def _rows(self, messages: list) -> list[tuple[str, tuple]]:
        """The valid readings as ring rows (ts, key, numeric fields: Topic.series_columns), one
        topic after another and in message order within each (a series is one partition).
        Validated a batch at a time as the store writers do: per message, pydantic took most of
        this thread's time at high rates."""
        by_topic: dict[str, list] = {}
        for msg in messages:
            if not msg.error():
                by_topic.setdefault(msg.topic(), []).append(msg)
        now_ms = int(time.time() * 1000)
        batch: list[tuple[str, tuple]] = []
        for msg in by_topic.pop(ALERTS_TOPIC, []):
            alert = self._alert(msg.value())
            if alert is not None:
                batch.append((ALERTS_TOPIC, alert_row(alert)))
        for topic, msgs in by_topic.items():
            spec = TOPICS[topic]
            valid, rejected = validate_batch(spec, [m.value() for m in msgs], [m.key() for m in msgs], now_ms)
            self.skipped += len(rejected)
            if len(valid):
                cols = valid.columns
                ts = cols["ts"].tolist()
                batch += [(topic, row) for row in zip(ts, cols[spec.key], *(cols[c].tolist() for c in spec.numeric))]
                self.resume_ms = max(self.resume_ms, max(ts))
        return batch

    def _alert(self, value: bytes | None) -> Alert | None:
        """A change of an alert's state; None for a snapshot (a renewed broker's copy of a state
        the page already has: not a change) or a record that is not an alert."""
        try:
            alert = decode(value or b"")
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.skipped += 1
            return None
        return None if alert.snapshot else alert

    def _on_assign(self, consumer, partitions, from_start: bool) -> None:
        if from_start:  # a renewed broker holds only what came after the renewal: read it all
            done = self._close_bridge()  # from where the bridge got to
            for p in partitions:
                p.offset = done.get((p.topic, p.partition), OFFSET_BEGINNING)
        else:
            # A leader that has just taken over answers OFFSET_NOT_AVAILABLE until its high
            # watermark has caught up (about a second): ask again rather than skip to the end.
            deadline = time.monotonic() + SEEK_RETRY_S
            while True:
                try:
                    found = consumer.offsets_for_times([TopicPartition(p.topic, p.partition, self.resume_ms) for p in partitions], timeout=5)
                    for p, f in zip(partitions, found):
                        p.offset = f.offset if f.offset >= 0 else OFFSET_END  # -1: nothing that recent yet
                    break
                except KafkaException as exc:
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    log.warning("cannot seek to %d (%s); reading from the latest offsets", self.resume_ms, exc)
                    for p in partitions:
                        p.offset = OFFSET_END
                    break
        consumer.assign(partitions)
        log.info("live feed assigned %d partitions from %s", len(partitions),
                 "the beginning" if from_start else time.strftime("%H:%M:%S", time.gmtime(self.resume_ms / 1000)))
        self.ready.set()

    def _check_broker(self, consumer) -> None:
        try:
            consumer.list_topics(timeout=1.0)
            if not self.health.broker_ok:
                log.info("broker reachable again")
            self.health.broker_ok = True
        except KafkaException as exc:  # no broker answered in time
            if self.health.broker_ok:
                log.warning("broker unreachable: %s", exc)
            self.health.broker_ok = False

    def stop(self) -> None:
        self.stopping.set()


class Buckets:
    """One connection's view of every series at the resolution a chart can draw.

    Time is cut into buckets of `width_ms` (about one pixel column of a live chart). Of each
    bucket a series' line keeps its last reading, and, when the bucket holds readings of
    different values, its min–max envelope (figures.envelope_id) gets the bucket's lowest and
    highest at the bucket's start, in the order of figures.envelope_path: the same drawing as
    the live window's history. A series slower than one reading per bucket thus stays raw, a
    faster one costs one line point and two envelope points per pixel column however fast it
    comes.
    The open (newest) bucket is sent as a provisional tail that the page replaces with the
    next one, so the newest reading shows at once at its own time.
    """

    def __init__(self, width_ms: int):
        self.width = max(1, width_ms)
        # (topic, key) -> its open bucket: [bucket, last ts, then per field its low, high and last value]
        self.open: dict[tuple[str, str], list] = {}

    def add(self, rows: dict[str, list]) -> dict[str, dict[str, list]]:
        """Rows by topic -> {topic: {meta: [xs, ys, tail]}}: for each series that changed, its
        line ("key|field": closed buckets' last readings, then the open one's) and, where a
        bucket spans values, its envelope ("!envelope|key|field": two points a bucket, see
        figures.envelope_ends); `tail` counts the open bucket's points at the end.
        Column-wise per sensor: at high rates a frame carries a hundred thousand rows."""
        out: dict[str, dict[str, list]] = {}
        for topic, topic_rows in rows.items():
            if not topic_rows:
                continue
            columns = [list(map(itemgetter(i), topic_rows)) for i in range(len(topic_rows[0]))]
            ts = np.asarray(columns[0], dtype=np.int64)
            codes, keys = pd.factorize(np.asarray(columns[1], dtype=object))
            values = [np.asarray(c) for c in columns[2:]]
            order = np.argsort(codes, kind="stable")  # each sensor's rows, in message order
            series: dict[str, list] = {}
            for at in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
                key = keys[codes[at[0]]]
                self._add_series(topic, key, ts[at], [v[at] for v in values], series)
            if series:
                out[topic] = series
        return out

    def _add_series(self, topic: str, key: str, ts: np.ndarray, values: list[np.ndarray], series: dict) -> None:
        state = self.open.get((topic, key))
        # Skip what is not newer than every reading before it (the feed re-reads from its last
        # point after a rebalance): a reading counts only past the newest one already counted.
        newest_before = np.maximum.accumulate(np.concatenate(([state[1] if state else np.iinfo(np.int64).min], ts)))[:-1]
        new = ts > newest_before
        if not new.any():
            return
        ts, values = ts[new], [v[new] for v in values]
        bucket = ts // self.width
        starts = np.concatenate(([0], np.flatnonzero(np.diff(bucket)) + 1))
        ends = np.concatenate((starts[1:], [len(ts)])) - 1
        buckets, line_ts = bucket[starts].tolist(), ts[ends].tolist()
        closes_open = state is not None and buckets[0] > state[0]
        fresh = [buckets[-1], line_ts[-1]]
        for i, field in enumerate(TOPICS[topic].numeric):
            lows = np.minimum.reduceat(values[i], starts).tolist()
            highs = np.maximum.reduceat(values[i], starts).tolist()
            lasts = values[i][ends].tolist()
            bks, xs = buckets, line_ts
            if state is not None:
                low, high, last = state[2 + 3 * i: 5 + 3 * i]
                if closes_open:  # the open bucket is final: it leads the line
                    bks, xs, lows, highs, lasts = [state[0], *bks], [state[1], *xs], [low, *lows], [high, *highs], [last, *lasts]
                else:
                    lows[0], highs[0] = min(low, lows[0]), max(high, highs[0])
            fresh += [lows[-1], highs[-1], lasts[-1]]
            series[series_id(key, field)] = [xs, lasts, 1]
            spans = [(bk, low, high) for bk, low, high in zip(bks, lows, highs) if low < high]
            if spans:
                series[envelope_id(key, field)] = [
                    [bk * self.width for bk, _, _ in spans for _ in range(2)],
                    [y for bk, low, high in spans for y in envelope_ends(bk, low, high)],
                    2 if spans[-1][0] == fresh[0] else 0,
                ]
        self.open[(topic, key)] = fresh


def alert_row(alert: Alert) -> dict:
    """What the page gets of a change of an alert's state (assets/alerts.js); `id` names the change:
    one per (rule, sensor, episode, state), so a change seen twice (store and ring) counts once."""
    return {"id": f"{alert.rule}|{alert.sensor}|{alert.since}|{alert.state}", "rule": alert.rule, "sensor": alert.sensor,
            "topic": alert.topic, "state": alert.state, "since": alert.since, "ts": alert.ts, "summary": alert.summary}


def latest_of(rows: dict[str, list]) -> dict[str, dict]:
    """The newest row per sensor, as the cards want it: {"topic|key": {"ts", "topic", "key", fields...}}."""
    latest: dict[str, dict] = {}
    for topic, topic_rows in rows.items():
        numeric = TOPICS[topic].numeric
        for row in topic_rows:
            ident = f"{topic}|{row[1]}"
            if ident not in latest or row[0] > latest[ident]["ts"]:
                latest[ident] = {"ts": row[0], "topic": topic, "key": row[1], **dict(zip(numeric, row[2:]))}
    return latest


class Pages:
    """The pages this process streams to: at most `limit` at once, each with a hang-up flag.

    Only a socket's own thread writes to it (two writers could interleave their bytes), so
    hanging up on a page sets its flag and its thread closes the socket at its next frame.
    """

    BUSY = 1013  # WebSocket close code "try again later"
    GOING_AWAY = 1001  # the server is stopping (the page retries as after any close)

    def __init__(self, limit: int):
        self.limit = limit
        self.sockets: dict = {}  # ws -> threading.Event, set to hang up
        self.lock = threading.Lock()

    def admit(self, ws) -> threading.Event | None:
        """The page's hang-up flag, or None when `limit` pages already stream."""
        with self.lock:
            if len(self.sockets) >= self.limit:
                return None
            self.sockets[ws] = threading.Event()
            return self.sockets[ws]

    def leave(self, ws) -> None:
        with self.lock:
            self.sockets.pop(ws, None)

    def close_all(self) -> None:
        """Hang up on every page (each reconnects from its cursor) within a heartbeat."""
        with self.lock:
            for flag in self.sockets.values():
                flag.set()


def serve_frames(ws, ring: Ring, health: Health, since: str | None, bucket_ms: int, hangup: threading.Event) -> None:
    """Stream frames to one page until it goes away: one frame in flight at a time.

    A frame holds everything after the page's cursor, bucketed (see Buckets). The page answers
    each frame once it has drawn it, with "<n> <cursor>"; only then does the next frame go out.
    So a lone reading is sent the moment it arrives, and under load the points that arrive
    while the page draws share the next frame: the page's drawing speed paces the stream and
    nothing queues anywhere. Idle pages still get a frame every HEARTBEAT_S (it carries the status).
    """
    try:
        seq = ring.parse(since) if since else ring.head
    except Gap as exc:
        ws.send(json.dumps({"reset": str(exc)}))
        return
    buckets, number = Buckets(bucket_ms), 0
    while not hangup.is_set():
        ring.wait(seq, HEARTBEAT_S)
        try:
            rows, head = ring.since(seq)
        except Gap as exc:
            ws.send(json.dumps({"reset": str(exc)}))
            return
        alerts = rows.pop(ALERTS_TOPIC, [])
        frame: dict[str, Any] = {
            "n": number, "from": f"{ring.epoch}:{seq}", "to": f"{ring.epoch}:{head}",
            "traces": buckets.add(rows), "latest": latest_of(rows), "alerts": alerts, "status": health.as_dict(),
        }
        ws.send(json.dumps(frame, separators=(",", ":")))
        number, seq = number + 1, head
        if ws.receive(timeout=ACK_TIMEOUT_S) is None:
            log.info("a page did not answer a frame in %ds; closing its socket", ACK_TIMEOUT_S)
            return


def hang_up(ws) -> None:
    """Close a live socket so that nothing follows the close handshake.

    Under Werkzeug, flask-sock writes an HTTP response onto the connection after the handler
    returns; a browser still reading it logs "Invalid frame header". So finish the close
    handshake, then shut the TCP connection: that late write meets a closed pipe instead.
    """
    try:
        ws.close()
    except ConnectionClosed:
        pass  # the page closed it
    ws.thread.join(1.0)  # the handshake's last frame is out (or the peer vanished)
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
