"""Integration: the real embedded broker process, real store writer processes, a real store."""
from __future__ import annotations

import json
import math
import signal
import threading
import time

import psutil
from confluent_kafka import Consumer, Producer

from pipeline.kafka import group_progress
from pipeline.schema import MAX_MESSAGE_BYTES, TOPICS
from pipeline.simulate import device_names, room_names
from pipeline.writer import group_id
from tests.helpers import on_each_backend, stop_process, wait_for

T = TOPICS["temperature"]
BASE = int(time.time() * 1000) - 3_600_000
ROOMS = ["kitchen", "office", "attic", "hall"]


def readings(n: int, value_offset: float = 0.0) -> list[tuple[bytes, bytes, tuple]]:
    """n distinct temperature readings: (key, value, (ts, room))."""
    out = []
    for i in range(n):
        room = ROOMS[i % len(ROOMS)]
        ts = BASE + i  # unique per (ts, room)
        body = {"ts": ts, "room": room, "value": round(20 + (i % 50) / 10 + value_offset, 2), "unit": "°C"}
        out.append((room.encode(), json.dumps(body).encode(), (ts, room)))
    return out


def produce(bootstrap: str, topic: str, messages, rate: float | None = None) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    start = time.monotonic()
    for i, (key, value, *_rest) in enumerate(messages):
        p.produce(topic, key=key, value=value)
        if rate and i % 100 == 0:
            p.poll(0)
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
    assert p.flush(30) == 0, "broker did not take every message"


def committed(bootstrap: str, topic: str, group: str) -> int:
    return group_progress(bootstrap, topic, group)[0]


@on_each_backend
def test_n_messages_make_n_rows_and_resending_them_adds_none(stack, broker):
    n = 3000
    batch = readings(n)
    produce(stack.bootstrap, "temperature", batch)
    with stack.running("pipeline.run", "consumer", "temperature", log_name="writer") as writer, stack.open_store() as store:
        store.ensure_tables()
        wait_for(lambda: store.count(T) >= n, 30, f"{n} rows")
        produce(stack.bootstrap, "temperature", batch)
        wait_for(lambda: committed(stack.bootstrap, "temperature", group_id(T)) == 2 * n, 30, "the writer to commit the resent messages")
        assert store.count(T) == n
        stored = store.since(T, BASE)
        assert set(zip(stored.ts.astype("int64"), stored.room)) == {r[2] for r in batch}
        assert writer.poll() is None


@on_each_backend
def test_a_full_batch_is_written_at_once_and_a_partial_one_at_its_flush_time(stack, broker):
    # Each batch is one write, so its rows share one received_at.
    n, size, flush_ms = 2500, 1000, 3000
    produce(stack.bootstrap, "temperature", readings(n))
    stack.env.update(WRITER_BATCH_SIZE=str(size), WRITER_FLUSH_MS=str(flush_ms))
    with stack.running("pipeline.run", "consumer", "temperature", log_name="writer"), stack.open_store() as store:
        store.ensure_tables()
        wait_for(lambda: store.count(T) == n, 30, f"{n} rows")
        batches = store.since(T, BASE).groupby("received_at").size().sort_index()
    assert batches.tolist() == [size, size, n - 2 * size]
    first, second, last = (t.value // 1_000_000 for t in batches.index)
    assert second - first < flush_ms / 2, "a full batch waited for the flush time"
    assert last - second >= flush_ms, "a partial batch was written before its flush time"


@on_each_backend
def test_writer_killed_mid_stream_loses_and_doubles_nothing(stack, broker):
    n = 20_000
    batch = readings(n, value_offset=1.0)
    sender = threading.Thread(target=produce, args=(stack.bootstrap, "temperature", batch, 4000.0))
    with stack.open_store() as store:
        store.ensure_tables()
        first = stack.spawn("pipeline.run", "consumer", "temperature", log_name="writer-1")
        try:
            sender.start()
            wait_for(lambda: store.count(T) >= 2000, 30, "the first writer to store some rows")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = store.count(T)
        finally:
            stop_process(first)
        assert killed_at < n, "the writer was killed after the stream ended; the test proves nothing"
        with stack.running("pipeline.run", "consumer", "temperature", log_name="writer-2"):
            sender.join(60)
            wait_for(lambda: committed(stack.bootstrap, "temperature", group_id(T)) == n, 60, "every message to be committed")
            assert store.count(T) == n
            stored = store.since(T, BASE)
            assert len(stored) == n
            expected = {r[2]: json.loads(r[1])["value"] for r in batch}
            assert dict(zip(zip(stored.ts.astype("int64"), stored.room), stored.value)) == expected


def dead_letters(bootstrap: str, topic: str, expected: int) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-dlq", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in c.consume(100, timeout=0.5) if not m.error()]
    finally:
        c.close()
    return out


@on_each_backend
def test_malformed_messages_go_to_the_dead_letter_topic_with_their_reason(stack, broker):
    now = int(time.time() * 1000)
    ok = {"ts": now, "room": "kitchen", "value": 21.0, "unit": "°C"}
    bad = {
        "bad JSON": (b"kitchen", b"{oops"),
        "missing field": (b"kitchen", json.dumps({k: v for k, v in ok.items() if k != "value"}).encode()),
        "wrong type": (b"kitchen", json.dumps({**ok, "value": "warm"}).encode()),
        "NaN": (b"kitchen", json.dumps({**ok, "value": math.nan}).encode()),
        "infinite": (b"kitchen", json.dumps({**ok, "value": math.inf}).encode()),
        "oversized": (b"kitchen", json.dumps({**ok, "pad": "x" * MAX_MESSAGE_BYTES}).encode()),
        "key mismatch": (b"office", json.dumps(ok).encode()),
        "empty": (b"kitchen", None),
    }
    reasons = {
        "bad JSON": "Invalid JSON", "missing field": "value: Field required", "wrong type": "value: Input should be a valid number",
        "NaN": "finite number", "infinite": "finite number", "oversized": "exceeds", "key mismatch": "does not match", "empty": "empty message",
    }
    valid = [(b"kitchen", json.dumps({**ok, "ts": now - i}).encode()) for i in range(1, 6)]
    with stack.running("pipeline.run", "consumer", "temperature", log_name="writer") as writer, stack.open_store() as store:
        store.ensure_tables()
        produce(stack.bootstrap, "temperature", valid[:2] + list(bad.values()) + valid[2:])
        letters = dead_letters(stack.bootstrap, "temperature.dlq", len(bad))
        wait_for(lambda: store.count(T) == len(valid), 30, "the valid readings to be stored")
        assert writer.poll() is None, "the writer died"
    assert len(letters) == len(bad)
    by_value = {(m.key(), m.value()): dict(m.headers()) for m in letters}
    for name, (key, value) in bad.items():
        headers = by_value[(key, value)]  # the original message, unchanged
        assert reasons[name] in headers["error"].decode(), (name, headers["error"])
        assert headers["source"].startswith(b"temperature/")
    assert "dead-lettering" in stack.log("writer")


@on_each_backend
def test_run_all_fills_the_store_and_stops_cleanly_on_ctrl_c(stack):
    proc = stack.spawn("pipeline.run", "all", "--no-dashboard", "--rate", "2", log_name="all")
    try:
        started = time.monotonic()
        with stack.open_store() as store:
            def every_sensor_has_rows():
                try:
                    have = {name: set(store.latest(spec)[spec.key]) for name, spec in TOPICS.items()}
                except Exception:  # noqa: BLE001 - tables not created yet, store locked...: not yet
                    return False
                return have["temperature"] >= set(room_names(4)) and have["humidity"] >= set(room_names(4)) and have["systemusage"] >= set(device_names(3))

            wait_for(every_sensor_has_rows, 15, "rows for every room and device", interval=0.25)
        print(f"every sensor had rows after {time.monotonic() - started:.1f}s")
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 6 + stack.embedded  # the embedded broker, 3 producers, 3 writers
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        print(f"stopped in {time.monotonic() - stopped:.1f}s")
        _gone, alive = psutil.wait_procs(family, timeout=1)
        assert not alive, f"left behind: {alive}"
    finally:
        stop_process(proc, signal.SIGKILL)
    log = stack.log("all")
    assert "all stopped" in log and "Traceback" not in log


def test_supervisor_restarts_a_crashed_writer_and_a_crashed_broker(stack):
    proc = stack.spawn("pipeline.run", "all", "--no-dashboard", "--rate", "5", log_name="all")
    try:
        with stack.open_store() as store:
            store.ensure_tables()
            wait_for(lambda: store.count(T) > 0, 20, "first rows")
            writer = next(p for p in psutil.Process(proc.pid).children() if "temperature" in p.cmdline() and "consumer" in p.cmdline())
            writer.kill()
            wait_for(lambda: "writer temperature exited with code -9" in stack.log("all"), 10, "the supervisor to notice")
            tansu = next(p for p in psutil.Process(proc.pid).children() if "tansu" in p.name())
            tansu.kill()
            wait_for(lambda: "embedded broker exited" in stack.log("all"), 10, "the supervisor to notice the broker")
            before = store.count(T)
            wait_for(lambda: store.count(T) > before + 20, 40, "rows to flow again after the broker restart")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
