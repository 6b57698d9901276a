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
latency, and on the embedded broker every fetch costs in proportion to what it holds.

A batch goes from messages to columns without a Python object per reading in between: the
messages are kept as consumed, their values and keys are taken out with C-level `map`s, and
`schema.validate_batch` decodes and checks them all at once (msgspec) into the columns the store
writes (`schema.Batch`). Only messages it refuses are looked at one by one, by the same
validator as before, which gives the dead-letter reason.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from confluent_kafka import KafkaException, Message, TopicPartition

from pipeline import kafka
from pipeline.config import Config
from pipeline.daemon import Every, backoff
from pipeline.schema import Batch, Topic, validate_batch
from pipeline.store import Store, StoreUnavailable

REPORT_S = 10.0
WRITER_FETCH = {"fetch.wait.max.ms": 500, "fetch.min.bytes": 65536}


def group_id(spec: Topic) -> str:
    return f"store-writer.{spec.name}"


class StoreWriter:
    def __init__(self, cfg: Config, spec: Topic, store: Store, stop: threading.Event):
        self.cfg, self.spec, self.store, self.stop = cfg, spec, store, stop
        self.log = logging.getLogger(f"writer.{spec.name}")
        overrides = dict(WRITER_FETCH)
        max_poll_ms = cfg.writer_max_poll_interval_ms
        if max_poll_ms:
            overrides["max.poll.interval.ms"] = int(max_poll_ms)
        self.consumer = kafka.consumer(cfg, group_id(spec), f"writer-{spec.name}", offset_reset="earliest", overrides=overrides)
        self.dlq = kafka.producer(cfg, f"writer-{spec.name}-dlq")
        self.pending: list[Message] = []  # consumed, not yet validated
        self.batch: Batch | None = None  # the valid readings of what was pending, as columns
        self.dead: list[tuple[bytes | None, bytes | None, list]] = []  # (key, value, headers)
        self.offsets: dict[int, int] = {}  # partition -> next offset to commit
        self.first_pending = 0.0
        self.stats = {"rows": 0, "batches": 0, "dead": 0}
        self.dead_reasons: Counter[str] = Counter()  # dead letters since the last report, by reason
        self.paused: list[TopicPartition] = []
        self.dropped: dict[int, int] = {}  # partition -> first offset dropped while paused

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self._wait_for_store()
        self.consumer.subscribe([self.spec.name], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.log.info("consuming %s as group %s into %s", self.spec.name, group_id(self.spec), type(self.store).__name__)
        report = Every(REPORT_S)
        reported = dict(self.stats)
        flush_s = self.cfg.writer_flush_ms / 1000
        while not self.stop.is_set():
            room = self.cfg.writer_batch_size - len(self.pending)
            self._take(self.consumer.consume(num_messages=max(1, room), timeout=0.1))
            if self.offsets and (room <= 0 or time.monotonic() - self.first_pending >= flush_s):
                self._flush(retry=True)
            elapsed = report()
            if elapsed:
                rows, batches, dead = (self.stats[k] - reported[k] for k in ("rows", "batches", "dead"))
                self.log.info(
                    "wrote %d rows in %d batches in %.0fs (%.0f rows/s), %d dead-lettered",
                    rows, batches, elapsed, rows / elapsed, dead,
                )
                reported = dict(self.stats)
                self._report_dead(elapsed)
        if self.offsets:
            self._flush(retry=False)
        self._report_dead(None)
        self.consumer.close()  # leaves the group at once, so the others take over without waiting
        self.log.info("stopped: %d rows written, %d dead-lettered", self.stats["rows"], self.stats["dead"])

    def _take(self, msgs: list[Message]) -> None:
        """Hold consumed messages until the batch is flushed; note each partition's next offset."""
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
            self.first_pending = time.monotonic()
        self.pending += msgs
        # A partition's messages come in offset order: the last one seen is its highest.
        for p, offset in dict(zip(map(Message.partition, msgs), map(Message.offset, msgs))).items():
            self.offsets[p] = offset + 1

    def _validate(self) -> None:
        """Pending messages -> the batch's columns and its dead letters (validated once, at flush)."""
        msgs, self.pending = self.pending, []
        # A flush ends with the batch written and committed or forgotten, so none is held here.
        self.batch, rejected = validate_batch(self.spec, list(map(Message.value, msgs)), list(map(Message.key, msgs)), int(time.time() * 1000))
        for i, reason in rejected:
            msg = msgs[i]
            headers = list(msg.headers() or []) + [
                ("error", reason.encode()),
                ("source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
            ]
            self.dead.append((msg.key(), msg.value(), headers))
            short = ": ".join(reason.split(": ")[:2])[:80]  # the field and the kind of fault, without the detail
            if not self.dead_reasons:  # the first of each interval in full; the rest are counted
                self.log.warning("dead-lettering %s/%d@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
            self.dead_reasons[short] += 1

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
    def _flush(self, retry: bool) -> bool:
        """Write pending readings and dead letters, then commit. False if it had to give up."""
        if self.pending:
            self._validate()
        attempt = 0
        while True:
            if attempt and not self.offsets:
                return False  # revoked while waiting: the batch was handed back uncommitted
            try:
                self._deliver_dead_letters()
                if self.batch is not None and len(self.batch):
                    self.store.write(self.spec, self.batch, int(time.time() * 1000))
                break
            except (StoreUnavailable, KafkaException) as exc:
                if not retry or self.stop.is_set() or not self.offsets:
                    self.log.warning("giving up on %d pending messages, left uncommitted for redelivery: %s", self._held(), exc)
                    self._forget()
                    self._resume()
                    return False
                delay = backoff(attempt)
                if attempt == 0 or delay >= 10:  # one line when it starts, then one per 10 s at most
                    self.log.warning("write failed (%s); retrying in %.1fs, partitions paused, offsets not committed", exc, delay)
                attempt += 1
                self._wait_polling(delay)
        if attempt:
            self.log.info("write succeeded after %d retries", attempt)
        self._resume()
        self.stats["rows"] += len(self.batch) if self.batch is not None else 0
        self.stats["batches"] += 1
        self._commit()
        return True

    def _wait_polling(self, seconds: float) -> None:
        """Wait with the partitions paused while still polling, so the group keeps us."""
        if not self.paused:
            try:
                self.paused = self.consumer.assignment()
                self.consumer.pause(self.paused)
            except KafkaException as exc:
                self.log.warning("could not pause partitions: %s", exc)
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and self.offsets and (left := deadline - time.monotonic()) > 0:
            for msg in self.consumer.consume(num_messages=1000, timeout=min(left, 0.5)):
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

    def _deliver_dead_letters(self) -> None:
        if not self.dead:
            return
        failures: list[str] = []

        def delivered(err, _msg):
            if err is not None:
                failures.append(err.str())

        for key, value, headers in self.dead:
            self.dlq.produce(self.spec.dlq, key=key, value=value, headers=headers, on_delivery=delivered)
        left = self.dlq.flush(10)
        if failures or left:
            # Nothing is committed; the same dead letters are sent again on the retry.
            raise KafkaException(f"dead-letter topic {self.spec.dlq} did not take {len(failures) + left} messages: {failures[:1]}")
        self.stats["dead"] += len(self.dead)
        self.dead.clear()

    def _commit(self) -> None:
        offsets = [TopicPartition(self.spec.name, p, o) for p, o in self.offsets.items()]
        # The rows are stored either way; whoever owns a partition whose commit failed re-reads
        # them and the upsert makes that harmless. Each partition's result is checked.
        try:
            results = self.consumer.commit(offsets=offsets, asynchronous=False) or []
            failed = [f"{tp.partition}: {tp.error.str()}" for tp in results if tp.error is not None]
            if failed:
                self.log.warning("commit failed for partitions %s; the next owner will re-read these rows", "; ".join(failed))
        except KafkaException as exc:
            self.log.warning("commit failed (%s); the next owner will re-read these rows", exc.args[0].str())
        self._forget()

    def _held(self) -> int:
        return len(self.pending) + (len(self.batch) if self.batch is not None else 0) + len(self.dead)

    def _forget(self) -> None:
        self.pending.clear()
        self.batch = None
        self.dead.clear()
        self.offsets.clear()

    # -- group membership ---------------------------------------------------------------------
    def _on_assign(self, _consumer, partitions) -> None:
        self.log.info("assigned partitions %s", sorted(p.partition for p in partitions))

    def _on_revoke(self, _consumer, partitions) -> None:
        # Finish what we hold before the partitions move; if the store is down, leave it
        # uncommitted for the next owner rather than block the rebalance.
        if self.offsets:
            self._flush(retry=False)
        self.paused, self.dropped = [], {}
        self.log.info("revoked partitions %s", sorted(p.partition for p in partitions))

    def _wait_for_store(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                self.store.ensure_tables()
                return
            except StoreUnavailable as exc:
                delay = backoff(attempt)
                self.log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                attempt += 1
                self.stop.wait(delay)


def run(cfg: Config, spec: Topic, store: Store, stop: threading.Event) -> None:
    StoreWriter(cfg, spec, store, stop).run()
