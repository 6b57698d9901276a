"""Store writer daemon: topic -> validate -> store, committing offsets only after the write.

Writers of one topic share the consumer group `store-writer.<topic>`, so they split its
partitions (queue semantics). Like quix-streams' sinks, a batch is written, made durable, and
only then are its offsets committed: a crash anywhere re-reads uncommitted messages, and the
store's upsert on (ts, key) makes the second write harmless. Messages that fail validation go
to `<topic>.dlq`, unchanged, with the reason in the `error` header.

A store that is down does not stop the writer from polling Kafka (quix-streams' backpressure):
its partitions are paused, the retry waits inside `consume()` (so the group never evicts it for
exceeding max.poll.interval.ms), anything still prefetched is dropped, and once the write
succeeds each partition is sought back to the first dropped offset and resumed.

Writers fetch with a 500 ms wait and 64 KiB minimum (WRITER_FETCH): they need no 50 ms
latency, and on the embedded broker every fetch costs in proportion to what it holds. That
broker sleeps after each read of a fetch, even one that found enough, so it answers no sooner
than the sleep (with this wait a writer got data ~4 times a second at 20,000 msg/s, ~2 at a few
hundred): a shorter wait buys lag with broker CPU (docs/performance.md). What the writer adds
on top is WRITER_FLUSH_MS at most: a batch is written that long after the consume() call that
brought its first message began waiting.

A batch goes from messages to columns without a Python object per reading in between: the
messages are kept as consumed, their values and keys are taken out with C-level `map`s, and
`schema.validate_batch` decodes and checks them all at once (msgspec) into the columns the store
writes (`schema.Batch`). Only messages it refuses are looked at one by one, by the same
validator as before, which gives the dead-letter reason.

The store write itself runs in a process of its own (`pipeline.write_behind`), one batch at a
time: while it writes one batch, this process consumes and validates the next, and commits the
first once its write has succeeded. A stop or a revoke waits for the write in flight.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import KafkaException, Message, TopicPartition

from pipeline import kafka
from pipeline.config import Config
from pipeline.daemon import Every, Stop, backoff
from pipeline.schema import Batch, Topic, validate_batch
from pipeline.store import StoreUnavailable
from pipeline.write_behind import Finished, Write, Writes

REPORT_S = 10.0
WRITER_FETCH = {"fetch.wait.max.ms": 500, "fetch.min.bytes": 65536}
# A write that takes longer than this is waited for with the partitions paused, polling Kafka,
# so a slow store does not get the writer evicted from its group (max.poll.interval.ms).
QUICK_WRITE_S = 1.0


def group_id(spec: Topic) -> str:
    return f"store-writer.{spec.name}"


@dataclass(eq=False)
class Flight:
    """A validated batch on its way to the store; its offsets are committed once it is written."""

    batch: Batch
    dead: list[tuple[bytes | None, bytes | None, list]]  # (key, value, headers), sent before the write
    offsets: dict[int, int]  # partition -> next offset to commit
    write: Write | None = None  # its write, once started


class StoreWriter:
    def __init__(self, cfg: Config, spec: Topic, writes: Writes, stop: Stop):
        self.cfg, self.spec, self.writes, self.stop = cfg, spec, writes, stop
        self.log = logging.getLogger(f"writer.{spec.name}")
        overrides = dict(WRITER_FETCH)
        max_poll_ms = cfg.writer_max_poll_interval_ms
        if max_poll_ms:
            overrides["max.poll.interval.ms"] = int(max_poll_ms)
        self.consumer = kafka.consumer(cfg, group_id(spec), f"writer-{spec.name}", offset_reset="earliest", overrides=overrides)
        self.dlq = kafka.producer(cfg, f"writer-{spec.name}-dlq")
        self.pending: list[Message] = []  # consumed, not yet validated
        self.offsets: dict[int, int] = {}  # partition -> next offset to commit, of what is pending
        self.flight: Flight | None = None  # the batch being written, at most one
        self.first_pending = 0.0
        self.stats = {"rows": 0, "batches": 0, "dead": 0}
        self.dead_reasons: Counter[str] = Counter()  # dead letters since the last report, by reason
        self.paused: list[TopicPartition] = []
        self.dropped: dict[int, int] = {}  # partition -> first offset dropped while paused

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self._wait_for_store()
        self.consumer.subscribe([self.spec.name], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.log.info("consuming %s as group %s", self.spec.name, group_id(self.spec))
        report = Every(REPORT_S)
        reported = dict(self.stats)
        flush_s = self.cfg.writer_flush_ms / 1000
        while not self.stop.is_set():
            # consume() returns a full batch or nothing until its timeout: never wait past the flush.
            started = time.monotonic()
            wait = min(0.1, max(0.0, self.first_pending + flush_s - started) if self.offsets else flush_s)
            room = self.cfg.writer_batch_size - len(self.pending)  # at least 1: a full batch is flushed at once
            self._take(self.consumer.consume(num_messages=room, timeout=wait), started)
            if self.offsets and (len(self.pending) >= self.cfg.writer_batch_size or time.monotonic() - self.first_pending >= flush_s):
                self._flush(retry=True)
            elif self.flight is not None and self.flight.write.done():  # commit a finished write at once
                self._land(retry=True)
            elapsed = report()
            if elapsed:
                rows, batches, dead = (self.stats[k] - reported[k] for k in ("rows", "batches", "dead"))
                self.log.info(
                    "wrote %d rows in %d batches in %.0fs (%.0f rows/s), %d dead-lettered",
                    rows, batches, elapsed, rows / elapsed, dead,
                )
                reported = dict(self.stats)
                self._report_dead(elapsed)
        self._drain(retry=False)
        self._report_dead(None)
        self.consumer.close()  # leaves the group at once, so the others take over without waiting
        self.log.info("stopped: %d rows written, %d dead-lettered", self.stats["rows"], self.stats["dead"])

    def _take(self, msgs: list[Message], started: float) -> None:
        """Hold consumed messages until the batch is flushed; note each partition's next offset.
        A new batch's age counts from `started`, when the consume() that brought it began
        waiting: its messages may have come in at any time since."""
        if not msgs:
            return
        if any(map(Message.error, msgs)):
            for msg in msgs:
                if msg.error():
                    self.log.warning("consume error: %s", msg.error().str())
            msgs = [msg for msg in msgs if not msg.error()]
            if not msgs:
                return
        if not self.offsets:
            self.first_pending = started
        self.pending += msgs
        # A partition's messages come in offset order: the last one seen is its highest.
        for p, offset in dict(zip(map(Message.partition, msgs), map(Message.offset, msgs))).items():
            self.offsets[p] = offset + 1

    def _validate(self) -> Flight:
        """Pending messages -> a flight: the batch's columns, its dead letters and its offsets."""
        msgs, self.pending = self.pending, []
        offsets, self.offsets = self.offsets, {}
        batch, rejected = validate_batch(self.spec, list(map(Message.value, msgs)), list(map(Message.key, msgs)), int(time.time() * 1000))
        dead = []
        for i, reason in rejected:
            msg = msgs[i]
            headers = list(msg.headers() or []) + [
                ("error", reason.encode()),
                ("source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
            ]
            dead.append((msg.key(), msg.value(), headers))
            short = ": ".join(reason.split(": ")[:2])[:80]  # the field and the kind of fault, without the detail
            if not self.dead_reasons:  # the first of each interval in full; the rest are counted
                self.log.warning("dead-lettering %s/%d@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
            self.dead_reasons[short] += 1
        return Flight(batch, dead, offsets)

    def _report_dead(self, elapsed: float | None) -> None:
        """One line for the dead letters of the interval, counted by reason."""
        if not self.dead_reasons:
            return
        total = sum(self.dead_reasons.values())
        reasons = ", ".join(f"{n} {r!r}" for r, n in self.dead_reasons.most_common(5))
        more = len(self.dead_reasons) - 5
        span = f" in the last {elapsed:.0f}s" if elapsed else ""
        self.log.warning("dead-lettered %d messages to %s%s: %s%s", total, self.spec.dlq, span, reasons, f" and {more} other reasons" if more > 0 else "")
        self.dead_reasons.clear()

    # -- write, then commit -------------------------------------------------------------------
    # A batch is validated while the one before it is written (in the write process, see
    # pipeline.write_behind). It is sent once that one is written, and before that one's offsets
    # are committed, so the commit's round trip to the broker overlaps its write too.
    def _flush(self, retry: bool) -> None:
        """Validate what is pending and start writing it, once the batch in flight is written."""
        flight = self._validate()
        if self.flight is not None:
            self._land(retry, then=flight)  # given up: the new batch is left uncommitted with the rest
        else:
            self.flight = flight
            self._launch(flight)

    def _drain(self, retry: bool) -> None:
        """Write and commit everything held: the batch in flight and what is pending."""
        if self.offsets:
            self._flush(retry)
        if self.flight is not None:
            self._land(retry)

    def _launch(self, flight: Flight) -> None:
        """Send the flight's dead letters, then start its write."""
        try:
            self._deliver_dead_letters(flight)
        except KafkaException as exc:
            flight.write = Finished(exc)
            return
        flight.write = self.writes.submit(self.spec, flight.batch, int(time.time() * 1000)) if len(flight.batch) else Finished()

    def _land(self, retry: bool, then: Flight | None = None) -> None:
        """Wait for the batch in flight to be written, launch `then`, and commit the written one.

        While the store is down the write is retried with the partitions paused (retry), or
        given up and left uncommitted for redelivery, with whatever else is held (not retry:
        on a stop or a revoke, which wait for the write without polling)."""
        flight, attempt = self.flight, 0
        while True:
            try:
                if flight.write is None:
                    self._launch(flight)
                if retry:
                    self._await(flight.write)
                if self.flight is not flight:
                    return  # revoked while waiting: the revoke landed it or handed it back
                flight.write.result()
                break
            except (StoreUnavailable, KafkaException) as exc:
                flight.write = None
                if self.flight is not flight:
                    return
                if not retry or self.stop.is_set():
                    held = self._held() + (len(then.batch) + len(then.dead) if then is not None else 0)
                    self.log.warning("giving up on %d pending messages, left uncommitted for redelivery: %s", held, exc)
                    self._forget()
                    self._resume()
                    return
                delay = backoff(attempt)
                if attempt == 0 or delay >= 10:  # one line when it starts, then one per 10 s at most
                    self.log.warning("write failed (%s); retrying in %.1fs, partitions paused, offsets not committed", exc, delay)
                attempt += 1
                self._wait_polling(delay)
        if attempt:
            self.log.info("write succeeded after %d retries", attempt)
        self._resume()
        self.stats["rows"] += len(flight.batch)
        self.stats["batches"] += 1
        self.flight = then
        if then is not None:
            self._launch(then)
        self._commit(flight.offsets)

    def _await(self, write: Write) -> None:
        """Wait for a write; a slow one with the partitions paused, still polling so the group keeps us."""
        if not write.wait(QUICK_WRITE_S):
            self._wait_polling(math.inf, until=write)

    def _wait_polling(self, seconds: float, until: Write | None = None) -> None:
        """Wait `seconds`, or until `until` is done, with the partitions paused while still polling."""
        if not self.paused:
            try:
                self.paused = self.consumer.assignment()
                self.consumer.pause(self.paused)
            except KafkaException as exc:
                self.log.warning("could not pause partitions: %s", exc)
        deadline = time.monotonic() + seconds
        while self.flight is not None and (left := deadline - time.monotonic()) > 0:
            if until.done() if until is not None else self.stop.is_set():
                return
            for msg in self.consumer.consume(num_messages=1000, timeout=min(left, 0.1 if until else 0.5)):
                if msg.error():
                    continue
                # Prefetched before the pause: dropped now, read again after the seek.
                p = msg.partition()
                self.dropped[p] = min(self.dropped.get(p, msg.offset()), msg.offset())

    def _resume(self) -> None:
        if not self.paused:
            return
        try:
            assigned = {tp.partition for tp in self.consumer.assignment()}
            for p, offset in self.dropped.items():
                if p in assigned:
                    self.consumer.seek(TopicPartition(self.spec.name, p, offset))
            self.consumer.resume([tp for tp in self.paused if tp.partition in assigned])
        except KafkaException as exc:
            self.log.warning("could not resume partitions: %s", exc)
        self.paused, self.dropped = [], {}

    def _deliver_dead_letters(self, flight: Flight) -> None:
        if not flight.dead:
            return
        failures: list[str] = []

        def delivered(err, _msg):
            if err is not None:
                failures.append(err.str())

        for key, value, headers in flight.dead:
            self.dlq.produce(self.spec.dlq, key=key, value=value, headers=headers, on_delivery=delivered)
        left = self.dlq.flush(10)
        if failures or left:
            # Nothing is committed; the same dead letters are sent again on the retry.
            raise KafkaException(f"dead-letter topic {self.spec.dlq} did not take {len(failures) + left} messages: {failures[:1]}")
        self.stats["dead"] += len(flight.dead)
        flight.dead = []

    def _commit(self, offsets: dict[int, int]) -> None:
        tps = [TopicPartition(self.spec.name, p, o) for p, o in offsets.items()]
        # The rows are stored either way; whoever owns a partition whose commit failed re-reads
        # them and the upsert makes that harmless. Each partition's result is checked.
        try:
            failed = kafka.commit(self.consumer, tps)
            if failed:
                self.log.warning("commit failed for %s; the next owner will re-read these rows", "; ".join(failed))
        except KafkaException as exc:
            self.log.warning("commit failed (%s); the next owner will re-read these rows", exc.args[0].str())

    def _held(self) -> int:
        flight = self.flight
        return len(self.pending) + (len(flight.batch) + len(flight.dead) if flight is not None else 0)

    def _forget(self) -> None:
        self.pending.clear()
        self.offsets.clear()
        self.flight = None

    # -- group membership ---------------------------------------------------------------------
    def _on_assign(self, _consumer, partitions) -> None:
        self.log.info("assigned partitions %s", sorted(p.partition for p in partitions))

    def _on_revoke(self, _consumer, partitions) -> None:
        # Finish what we hold before the partitions move; if the store is down, leave it
        # uncommitted for the next owner rather than block the rebalance.
        self._drain(retry=False)
        self.paused, self.dropped = [], {}
        self.log.info("revoked partitions %s", sorted(p.partition for p in partitions))

    def _wait_for_store(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                self.writes.ensure_tables()
                return
            except StoreUnavailable as exc:
                delay = backoff(attempt)
                self.log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                attempt += 1
                self.stop.wait(delay)


def run(cfg: Config, spec: Topic, writes: Writes, stop: Stop) -> None:
    StoreWriter(cfg, spec, writes, stop).run()
