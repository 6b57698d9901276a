"""Alerter daemon: the reading and dead-letter topics -> the rules -> the `alerts` topic.

It reads every reading in a consumer group of its own, `alerter` (pub/sub beside the store
writers' queue), evaluates the rules on event time (pipeline/evaluate.py) and publishes each
change of an alert's state to `alerts`, keyed by rule and sensor.

Nothing is lost or repeated across a crash, because of the order of things:
1. At start it replays the whole `alerts` topic into its state, as a Kafka Streams store is
   rebuilt from its changelog: each record says the state an alert took and up to which reading
   the rule had evaluated that sensor (`seen`).
2. A batch of readings is evaluated; the changes it causes are produced and the alerter waits
   until the broker has acknowledged every one of them (acks=all);
3. only then are the batch's offsets committed.
A crash between 2 and 3 re-reads the batch after the restart, and since the state already holds
what step 2 published, each rule skips the readings up to its `seen` and publishes nothing twice.

The embedded broker is renewed now and then (pipeline/supervisor.py) and holds nothing of the old
one. The alerter follows RUN_DIR/broker.address as the producers do: it publishes its active
alerts to the new broker's `alerts` topic (records marked `snapshot`, so a restart there rebuilds
the same state), reads the new broker from its beginning, and finishes the old one (what the
producers left there) until it has been quiet for DRAIN_QUIET_S. A broker that crashed with changes
not yet acknowledged gets them on its replacement.

Acknowledged changes then go to the store (the `alerts` table, for history) and the webhook, each
from a thread of its own: neither can hold up the alerter. The store also gets every record of the
replay at start (a row written again overwrites itself), so a change the store missed before a
crash is stored after it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from pipeline import kafka
from pipeline.alerts import ALERTS_TOPIC, WEBHOOK_DLQ, Alert, decode, encode
from pipeline.broker import current_address
from pipeline.config import Config
from pipeline.daemon import Every, backoff
from pipeline.evaluate import Engine, topic_of
from pipeline.rules import Rule
from pipeline.schema import TOPICS, validate_batch
from pipeline.store import Store, StoreUnavailable
from pipeline.webhook import Webhook

GROUP = "alerter"
REPORT_S = 10.0
BATCH = 10_000
POLL_S = 0.05  # longest a consume waits: a lone reading is evaluated at once
TICK_S = 0.5  # how often the clock is looked at (stale sensors, quiet dead-letter topics)
FOLLOW_S = 0.2  # how often RUN_DIR/broker.address is read
DRAIN_QUIET_S = 1.0  # a broker left behind is read until it has been quiet this long since its assignment...
DRAIN_MAX_S = 15.0  # ...or this long at most (a crashed one never answers; producers re-send 15 s to the next)
ACK_WAIT_S = 0.25  # a publish waits for acknowledgements in slices this long, following the broker between
STOP_PUBLISH_S = 10.0  # a stopping alerter tries this long to publish; what it gives up on is re-read next time


def ack_file(cfg: Config) -> Path:
    """RUN_DIR/alerter.address: the broker the alerter reads alone, having finished any before it."""
    return Path(cfg.run_dir) / "alerter.address"


def left_broker(cfg: Config, address: str) -> bool:
    """Whether the alerter has finished reading the broker at `address` (the supervisor stops a
    renewed broker only then: an alerter down during the renewal reads its rest when restarted)."""
    try:
        return ack_file(cfg).read_text() != address
    except OSError:
        return True  # no alerter has run on this RUN_DIR


def topics() -> list[str]:
    return [n for spec in TOPICS.values() for n in (spec.name, spec.dlq)]


@dataclass
class Source:
    """The alerter's consumer on one broker, with the offsets it has evaluated and not yet committed."""

    address: str
    consumer: object
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    quiet_since: float = field(default_factory=time.monotonic)
    left_at: float | None = None  # when the alerter moved to another broker
    assigned: bool = False


class StoreSink(threading.Thread):
    """Writes acknowledged changes to the store's `alerts` table, retrying with back-off."""

    def __init__(self, store: Store, stop: threading.Event):
        super().__init__(name="alert-store", daemon=True)
        self.store, self.stop = store, stop
        self.queue: queue.Queue[list[Alert]] = queue.Queue()
        self.log = logging.getLogger("alerter.store")
        self.stored = 0

    def put(self, alerts: list[Alert]) -> None:
        changes = [a for a in alerts if not a.snapshot]
        if changes:
            self.queue.put(changes)

    def run(self) -> None:
        ready, attempt = False, 0
        while True:
            try:
                alerts = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            while True:
                try:
                    if not ready:
                        self.store.ensure_tables()
                        ready = True
                    self.store.write_alerts(alerts)
                    self.stored += len(alerts)
                    if attempt:
                        self.log.info("store takes alerts again")
                    attempt = 0
                    break
                except StoreUnavailable as exc:
                    delay = backoff(attempt)
                    if attempt == 0 or delay >= 10:  # one line when it starts, then one per 10 s at most
                        self.log.warning("store unavailable (%s); %d alert change(s) wait, retrying in %.1fs", exc, len(alerts), delay)
                    attempt += 1
                    if self.stop.wait(delay):
                        return

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)


class Alerter:
    def __init__(self, cfg: Config, rules: tuple[Rule, ...], store: Store, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.log = logging.getLogger("alerter")
        self.engine = Engine(rules, 1000 / cfg.rate)
        self.sink = StoreSink(store, stop)
        self.webhook = Webhook(cfg.alert_webhook_url, stop) if cfg.alert_webhook_url else None
        self.sources: list[Source] = []  # the current broker's last; brokers left behind before it
        self.producer = None
        self.address = ""
        self.unacked: dict[int, Alert] = {}
        self.next_id = 0
        self.stats = {"readings": 0, "dead": 0, "changes": 0}
        self.assigned = False  # the current broker's partitions are ours: the clock may be looked at once caught up

    def _attach(self, address: str, from_start: bool) -> None:
        """Read this broker's readings (and publish to it) from now on."""
        consumer = kafka.consumer(self.cfg, GROUP, "alerter", offset_reset="earliest", bootstrap=address)
        consumer.subscribe(topics(), on_assign=self._on_assign, on_revoke=self._on_revoke)
        if self.producer is not None:
            self.producer.flush(0)
            self.producer.purge(in_queue=True, in_flight=True)  # unacknowledged changes are sent again below
            self.producer.poll(0)
        self.producer = kafka.producer(self.cfg, "alerter", bootstrap=address, overrides={"linger.ms": 0})
        self.sources.append(Source(address, consumer))
        self.address, self.assigned = address, False
        if from_start:
            self.log.info("consuming %s as group %s on %s", ", ".join(topics()), GROUP, address)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        address = current_address(self.cfg)
        records = read_changelog(self.cfg, address, self.log)
        for record in records:
            self.engine.restore(record)
        self.sink.start()
        self.sink.put(records)
        if self.webhook:
            self.webhook.start()
        active = sum(1 for tracks in self.engine.tracks.values() for t in tracks.values() if t.state != "ok")
        self.log.info("state rebuilt from %d record(s) of %s: %d alert(s) pending or firing", len(records), ALERTS_TOPIC, active)
        previous = self._previous(address)
        if previous:
            self._attach(previous, from_start=True)
            self.sources[-1].left_at = time.monotonic()
        self._attach(address, from_start=True)
        self._ack()
        report, tick, follow = Every(REPORT_S), Every(TICK_S), Every(FOLLOW_S)
        reported = dict(self.stats)
        while not self.stop.is_set():
            caught_up = self._step()
            if caught_up and self.assigned and tick():
                self._publish(self.engine.tick(int(time.time() * 1000)))
            if self.cfg.embedded_broker and follow():
                self._follow()
            self._retire()
            self._dead_letter_webhook_failures()
            elapsed = report()
            if elapsed:
                readings, dead, changes = (self.stats[k] - reported[k] for k in ("readings", "dead", "changes"))
                self.log.info("evaluated %d readings in %.0fs (%.0f/s), %d dead letters, %d alert change(s), %d late skipped%s",
                              readings, elapsed, readings / elapsed, dead, changes, self.engine.late, self._webhook_note())
                reported = dict(self.stats)
        for source in self.sources:
            source.consumer.close()  # leaves the group at once
        self.sink.drain(5.0)
        self.log.info("stopped: %d readings evaluated, %d alert change(s) published", self.stats["readings"], self.stats["changes"])

    def _previous(self, address: str) -> str | None:
        """A broker this alerter's predecessor had not finished when it died, if it still answers."""
        if not self.cfg.embedded_broker:
            return None
        try:
            previous = ack_file(self.cfg).read_text()
        except OSError:
            return None
        if previous == address:
            return None
        probe = kafka.consumer(self.cfg, f"{GROUP}-probe", "alerter-probe", offset_reset="earliest", bootstrap=previous)
        try:
            probe.list_topics(timeout=2)
        except KafkaException:
            return None
        finally:
            probe.close()
        self.log.info("finishing %s first: the broker before %s, left unfinished", previous, address)
        return previous

    def _ack(self) -> None:
        """Tell the supervisor the alerter reads only the current broker now (nothing left on an old one)."""
        if self.cfg.embedded_broker and len(self.sources) == 1:
            path = ack_file(self.cfg)
            try:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(self.address)
                tmp.replace(path)
            except OSError as exc:
                self.log.warning("cannot write %s: %s", path, exc)

    def _webhook_note(self) -> str:
        if self.webhook is None:
            return ""
        s = self.webhook.status
        return f"; webhook: {s['delivered']} delivered, {s['failures']} failed attempt(s), {s['dropped']} dropped"

    def _step(self) -> bool:
        """Consume a batch, evaluate it, publish the changes, commit. A broker left behind is read
        to its end before the current one: its readings come first in event time, and read later
        they would be skipped as late. True when the current broker had nothing more to give (the
        clock may be looked at)."""
        source = self.sources[0]
        msgs = source.consumer.consume(BATCH, timeout=POLL_S)
        if msgs:
            source.quiet_since = time.monotonic()
        if not self._publish(self._evaluate(source, msgs)):
            return False  # not acknowledged (stopping): leave the offsets uncommitted
        self._commit(source)
        return len(self.sources) == 1 and len(msgs) < BATCH

    def _evaluate(self, source: Source, msgs: list[Message]) -> list[Alert]:
        by_topic: dict[str, list[Message]] = {}
        for msg in msgs:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    self.log.warning("consume error: %s", msg.error().str())
                continue
            by_topic.setdefault(msg.topic(), []).append(msg)
            source.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        changes: list[Alert] = []
        now_ms = int(time.time() * 1000)
        for topic, topic_msgs in by_topic.items():
            base = topic_of(topic)
            if base is not None:
                self.stats["dead"] += len(topic_msgs)
                changes += self.engine.dead_letters(base, [m.timestamp()[1] for m in topic_msgs])
                continue
            batch, _rejected = validate_batch(TOPICS[topic], list(map(Message.value, topic_msgs)), list(map(Message.key, topic_msgs)), now_ms)
            self.stats["readings"] += len(batch)  # the writers dead-letter the rest; the dlq rule sees them there
            changes += self.engine.readings(batch)
        return changes

    def _publish(self, changes: list[Alert]) -> bool:
        """Produce the changes and wait until the broker has acknowledged each; False if stopped first."""
        for alert in changes:
            self.unacked[self.next_id] = alert
            self._produce(self.next_id, alert)
            self.next_id += 1
        give_up = None
        attempt = 0
        while self.unacked:
            self.producer.flush(ACK_WAIT_S)
            if not self.unacked:
                break
            if self.stop.is_set():
                give_up = give_up or time.monotonic() + STOP_PUBLISH_S
                if time.monotonic() > give_up:
                    self.log.warning("stopping with %d alert change(s) unacknowledged; the readings that caused them are "
                                     "read again at the next start", len(self.unacked))
                    return False
            if self.cfg.embedded_broker and self._follow():
                continue  # the new broker's producer has them all again
            if not len(self.producer):  # some failed: send them again after a back-off
                delay = backoff(attempt)
                attempt += 1
                self.log.warning("%d alert change(s) not acknowledged; sending them again in %.1fs", len(self.unacked), delay)
                self.stop.wait(delay)
                for i, alert in list(self.unacked.items()):
                    self._produce(i, alert)
        self.stats["changes"] += sum(not a.snapshot for a in changes)
        for alert in changes:
            if not alert.snapshot:
                self.log.info("%s %s/%s: %s", alert.state, alert.rule, alert.sensor, alert.summary)
        self.sink.put(changes)
        if self.webhook:
            self.webhook.send([a for a in changes if not a.snapshot])
        return True

    def _dead_letter_webhook_failures(self) -> None:
        """Each failed delivery to `alerts.dlq` with the reason, like a writer's dead letters: the
        pipeline page shows them. Not waited for: the log and the webhook's counts have them too."""
        while self.webhook:
            try:
                alert, reason = self.webhook.failures.get_nowait()
            except queue.Empty:
                return
            try:
                self.producer.produce(WEBHOOK_DLQ, key=alert.key, value=encode(alert),
                                      headers={"error": reason, "source": f"{ALERTS_TOPIC} ({alert.state} {alert.rule}/{alert.sensor})"})
            except BufferError:
                return  # the queue is full of alert changes, which come first

    def _produce(self, i: int, alert: Alert) -> None:
        def delivered(err, _msg):
            if err is None:
                self.unacked.pop(i, None)

        while True:
            try:
                self.producer.produce(ALERTS_TOPIC, key=alert.key, value=encode(alert), on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _commit(self, source: Source) -> None:
        if not source.offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in source.offsets.items()]
        source.offsets = {}
        try:
            failed = kafka.commit(source.consumer, tps)
            if failed:
                self.log.warning("commit failed for %s; those readings are evaluated again (nothing is published twice)", ", ".join(failed))
        except KafkaException as exc:
            self.log.warning("commit on %s failed (%s); those readings are evaluated again", source.address, exc.args[0].str())

    # -- the embedded broker's renewals ---------------------------------------------------------
    def _follow(self) -> bool:
        """Move to the broker RUN_DIR/broker.address names, if it changed; True if it did."""
        address = current_address(self.cfg)
        if address == self.address:
            return False
        self.log.info("the embedded broker moved to %s; publishing %d active alert(s) there and finishing %s",
                      address, len(self.engine.active()), self.address)
        self.sources[-1].left_at = time.monotonic()
        self._attach(address, from_start=False)
        for i, alert in list(self.unacked.items()):  # purged from the old broker's producer
            self._produce(i, alert)
        for alert in self.engine.active():
            self.unacked[self.next_id] = alert
            self._produce(self.next_id, alert)
            self.next_id += 1
        return True

    def _retire(self) -> None:
        """Close the consumers of brokers left behind once they are drained (or gone)."""
        now = time.monotonic()
        for source in self.sources[:-1]:
            if (source.assigned and now - source.quiet_since >= DRAIN_QUIET_S) or now - source.left_at >= DRAIN_MAX_S:
                self._commit(source)
                source.consumer.close()
                self.sources.remove(source)
                self.log.info("finished reading %s", source.address)
                self._ack()

    def _on_assign(self, consumer, partitions) -> None:
        self.assigned = consumer is self.sources[-1].consumer
        for source in self.sources:
            if source.consumer is consumer:
                source.assigned, source.quiet_since = True, time.monotonic()
        self.log.info("assigned %s", ", ".join(f"{p.topic}/{p.partition}" for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        # What was evaluated and published is committed before another member takes over.
        for source in self.sources:
            if source.consumer is consumer:
                self._commit(source)


def read_changelog(cfg: Config, address: str, log: logging.Logger) -> list[Alert]:
    """Every record of `alerts` on the broker at `address`, oldest first in each partition."""
    probe = kafka.consumer(cfg, f"{GROUP}-replay", "alerter-replay", offset_reset="earliest", bootstrap=address)
    try:
        metadata = probe.list_topics(timeout=10).topics.get(ALERTS_TOPIC)
        if metadata is None or not metadata.partitions:
            return []
        parts = [TopicPartition(ALERTS_TOPIC, p) for p in metadata.partitions]
        ends = {p: e for p, e in kafka.end_offsets(probe, parts).items() if e > 0}
        records: list[Alert] = []
        if not ends:
            return records
        probe.assign([TopicPartition(ALERTS_TOPIC, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for msg in probe.consume(BATCH, timeout=0.5):
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
                try:
                    records.append(decode(msg.value()))
                except (msgspec.ValidationError, msgspec.DecodeError, TypeError):
                    log.warning("skipping a record of %s that is not an alert (partition %d offset %d)", ALERTS_TOPIC, msg.partition(), msg.offset())
        if ends:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"could not read {ALERTS_TOPIC} on {address} to its end"))
        return records
    finally:
        probe.close()


def carry_changelog(cfg: Config, old: str, new: str) -> int:
    """Copy the newest record of each alert from `old`'s `alerts` topic to `new`'s, as snapshots.

    The supervisor calls this when it renews the embedded broker, before the switch: an alerter
    that was down during the renewal, or restarts after it, rebuilds from the new broker the same
    state (a live alerter also publishes its own snapshot when it follows). How many were copied;
    KafkaException if either broker failed.
    """
    log = logging.getLogger("alerter.carry")
    newest: dict[bytes, Alert] = {}
    for record in read_changelog(cfg, old, log):
        newest[record.key] = record
    producer = kafka.producer(cfg, "alerter-carry", bootstrap=new)
    failures: list[str] = []
    for record in newest.values():
        producer.produce(ALERTS_TOPIC, key=record.key, value=encode(msgspec.structs.replace(record, snapshot=True)),
                         on_delivery=lambda err, _msg: failures.append(err.str()) if err else None)
    left = producer.flush(10)
    if failures or left:
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, f"{len(failures) + left} alert record(s) not copied to {new}"))
    return len(newest)


def run(cfg: Config, rules: tuple[Rule, ...], store: Store, stop: threading.Event) -> None:
    Alerter(cfg, rules, store, stop).run()
