"""A store writer through a store outage or a stalled write longer than max.poll.interval.ms, and dead-letter logs."""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

from pipeline.schema import TOPICS
from pipeline.store import StoreUnavailable
from pipeline.write_behind import InProcess, WriteBehind
from pipeline.writer import StoreWriter, group_id
from tests.helpers import on_each_backend, wait_for
from tests.test_pipeline import committed, produce, readings

T = TOPICS["temperature"]


class Cfg:
    """The stack's Config plus settings the writer reads with getattr."""

    def __init__(self, cfg, **extra):
        self._cfg, self._extra = cfg, extra

    def __getattr__(self, name):
        return self._extra[name] if name in self._extra else getattr(self._cfg, name)


class FlakyStore:
    def __init__(self, store):
        self.store, self.down, self.failures = store, False, 0

    def ensure_tables(self):
        self.store.ensure_tables()

    def write(self, *args):
        if self.down:
            self.failures += 1
            raise StoreUnavailable("store is down (test)")
        self.store.write(*args)


@on_each_backend
def test_writer_keeps_its_partitions_through_an_outage_longer_than_max_poll_interval(stack, broker, caplog):
    caplog.set_level(logging.INFO, logger="writer.temperature")
    cfg = Cfg(stack.config(), writer_max_poll_interval_ms=6000)  # librdkafka's minimum is session.timeout.ms
    n = 4000
    with stack.open_store() as real:
        store = FlakyStore(real)
        store.ensure_tables()
        stop = threading.Event()
        writer = StoreWriter(cfg, T, InProcess(store), stop)
        thread = threading.Thread(target=writer.run)
        thread.start()
        try:
            wait_for(lambda: "assigned partitions" in caplog.text, 30, "the writer to join its group")
            store.down = True
            produce(stack.bootstrap, "temperature", readings(n))
            wait_for(lambda: store.failures > 0, 10, "the first failed write")
            time.sleep(15)  # 2.5 x max.poll.interval.ms
            assert real.count(T) == 0
            store.down = False
            wait_for(lambda: committed(stack.bootstrap, "temperature", group_id(T)) >= n, 30, "every message committed")
            assert real.count(T) == n
            text = caplog.text  # before the stop, whose close revokes the partitions
        finally:
            stop.set()
            thread.join(30)
    assert "revoked" not in text and "commit failed" not in text, text[-2000:]
    assert "partitions paused" in text and "write succeeded after" in text
    retry_lines = text.count("write failed")
    assert retry_lines <= 3, f"{retry_lines} retry lines for one outage"


def test_a_write_stalled_longer_than_max_poll_interval_keeps_the_writer_in_its_group(stack, broker, caplog):
    """The write process waits on a locked SQLite file; meanwhile the writer keeps polling Kafka."""
    caplog.set_level(logging.INFO, logger="writer.temperature")
    cfg = Cfg(stack.config(), writer_max_poll_interval_ms=6000)
    n = 4000
    with WriteBehind(cfg) as writes, stack.open_store() as real:
        stop = threading.Event()
        thread = threading.Thread(target=StoreWriter(cfg, T, writes, stop).run)
        thread.start()
        lock = sqlite3.connect(real.path)
        try:
            wait_for(lambda: "assigned partitions" in caplog.text, 30, "the writer to join its group")
            lock.execute("BEGIN EXCLUSIVE")  # the write process's transaction waits for it (30 s busy timeout)
            # Readings keep coming, so the writer has the next batch to send and waits for the stalled write.
            sender = threading.Thread(target=produce, args=(stack.bootstrap, "temperature", readings(n), n / 10))
            sender.start()
            time.sleep(15)  # 2.5 x max.poll.interval.ms with a write in flight
            assert committed(stack.bootstrap, "temperature", group_id(T)) == 0
            lock.rollback()
            sender.join(30)
            wait_for(lambda: committed(stack.bootstrap, "temperature", group_id(T)) >= n, 30, "every message committed")
            assert real.count(T) == n
            text = caplog.text
        finally:
            lock.close()
            stop.set()
            thread.join(30)
    assert "revoked" not in text and "commit failed" not in text and "write failed" not in text, text[-2000:]


@on_each_backend
def test_dead_letters_are_summarised_per_interval(stack, broker, caplog):
    caplog.set_level(logging.INFO, logger="writer.temperature")
    bad = [(b"kitchen", b"{oops %d" % i) for i in range(500)]
    good = [(b"kitchen", json.dumps({"ts": int(time.time() * 1000) - i, "room": "kitchen", "value": 20.0, "unit": "°C"}).encode()) for i in range(1, 4)]
    with stack.open_store() as store:
        stop = threading.Event()
        thread = threading.Thread(target=StoreWriter(stack.config(), T, InProcess(store), stop).run)
        thread.start()
        try:
            produce(stack.bootstrap, "temperature", bad + good)
            wait_for(lambda: committed(stack.bootstrap, "temperature", group_id(T)) >= len(bad) + len(good), 30, "everything committed")
        finally:
            stop.set()
            thread.join(30)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) <= 4, [r.getMessage() for r in lines]
    summary = [r.getMessage() for r in lines if r.getMessage().startswith("dead-lettered")]
    assert summary and "500 'message: Invalid JSON" in " ".join(summary), summary
