"""Integration: the embedded broker renewed, crashed and stopped under load, with nothing lost
(stops and stalls on Apache Kafka too).

Each test runs the real `python -m pipeline.run all --no-dashboard` and checks, from the
store, that every reading the producers sent is stored (sent = stored) and that no series has
a hole longer than one reporting interval (1 / rate).
"""
from __future__ import annotations

import re
import signal
import time

import psutil
import pytest

from pipeline.schema import TOPICS
from tests.helpers import on_each_backend, producer_totals, stop_process, wait_for

RATE = 5.0


def sent_by_producers(log: str) -> int:
    counts = [n for n, _failed, left in producer_totals(log).values() if left == 0]
    assert len(counts) == len(TOPICS), f"not every producer reported a clean stop:\n{log[-3000:]}"
    return sum(counts)


def stored_and_gaps(stack, since_ms: int, sent: int) -> tuple[int, float]:
    """Rows stored in all tables (once writers stored what Kafka kept), and the longest gap (ms)
    between consecutive readings of a series."""
    total, worst = 0, 0.0
    stack.store_what_kafka_kept(sent)
    with stack.open_store() as store:
        for spec in TOPICS.values():
            total += store.count(spec)
            frame = store.since(spec, since_ms)
            for _key, rows in frame.groupby(spec.key):
                ts = rows.ts.astype("int64").sort_values()
                if len(ts) > 1:
                    worst = max(worst, float(ts.diff().max()))
    return total, worst


def run_all(stack, *extra: str, rate: float = RATE):
    return stack.spawn("pipeline.run", "all", "--no-dashboard", "--rate", f"{rate:g}", *extra, log_name="all")


def stop_and_check(stack, proc, started_ms: int) -> tuple[int, int, float]:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0
    log = stack.log("all")
    assert "Traceback" not in log, log[-3000:]
    sent = sent_by_producers(log)
    stored, gap = stored_and_gaps(stack, started_ms - 60_000, sent)
    print(f"sent {sent}, stored {stored}, longest gap in a series {gap:.0f} ms")
    return sent, stored, gap


def test_broker_renewed_under_load_loses_nothing_and_leaves_no_hole(stack):
    stack.env["BROKER_MAX_MB"] = "1"  # any real broker is bigger: a renewal at every 10 s check
    started_ms = int(time.time() * 1000)
    proc = run_all(stack)
    try:
        wait_for(lambda: stack.log("all").count("embedded broker renewed") >= 2, 120, "two renewals", interval=0.5)
        sent, stored, gap = stop_and_check(stack, proc, started_ms)
    finally:
        stop_process(proc, signal.SIGKILL)
    log = stack.log("all")
    assert "did not store everything" not in log and "did not all leave" not in log
    assert len(set(re.findall(r"-> (127\.0\.0\.1:\d+)", log))) >= 2, "renewals alternate between two ports"
    assert sent > 0 and stored == sent
    assert gap <= 1000 / RATE + 1, f"a series has a {gap:.0f} ms hole"


def test_broker_crash_loses_nothing_and_leaves_no_hole(stack):
    started_ms = int(time.time() * 1000)
    proc = run_all(stack)
    try:
        with stack.open_store() as store:
            store.ensure_tables()
            wait_for(lambda: store.count(TOPICS["temperature"]) > 20, 30, "first rows")
        tansu = next(p for p in psutil.Process(proc.pid).children() if "tansu" in p.name())
        tansu.kill()
        wait_for(lambda: "embedded broker replaced" in stack.log("all"), 20, "the supervisor to replace the broker")
        replaced = re.search(r"replaced by \S+ in ([\d.]+)s", stack.log("all")).group(1)
        print(f"broker replaced in {replaced}s")
        time.sleep(8)
        sent, stored, gap = stop_and_check(stack, proc, started_ms)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert stored == sent
    assert gap <= 1000 / RATE + 1, f"a series has a {gap:.0f} ms hole"


@on_each_backend
def test_ctrl_c_with_the_broker_stopped_delivers_the_queue_once_it_is_back(stack, request):
    """Producers keep queueing while the broker is frozen; Ctrl-C waits for their queues."""
    started_ms = int(time.time() * 1000)
    proc = run_all(stack)
    try:
        with stack.open_store() as store:
            store.ensure_tables()
            wait_for(lambda: store.count(TOPICS["temperature"]) > 20, 30, "first rows")
        if stack.embedded:
            broker = next(p for p in psutil.Process(proc.pid).children() if "tansu" in p.name())
        else:
            broker = psutil.Process(request.getfixturevalue("kafka_server").nodes[1].pid)
        broker.suspend()  # the broker stops answering: producer queues grow
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        time.sleep(10)  # longer than the old 8 s grace that SIGKILLed the producers
        broker.resume()
        assert proc.wait(90) == 0
        log = stack.log("all")
        sent = sent_by_producers(log)
        stored, gap = stored_and_gaps(stack, started_ms - 60_000, sent)
        print(f"sent {sent}, stored {stored}, longest gap {gap:.0f} ms")
    finally:
        stop_process(proc, signal.SIGKILL)
    assert stored == sent
    assert gap <= 1000 / RATE + 1


@on_each_backend
def test_producers_that_stall_catch_up_with_each_reading_at_its_own_time(stack):
    """A producer paused mid-run (a stall, a busy machine) sends what it missed when it resumes,
    each reading stamped with its own sampling time: none shares a millisecond with another
    of its sensor (the store would keep one), so sent = stored and no series has a hole."""
    started_ms = int(time.time() * 1000)
    proc = run_all(stack, rate=50)  # 20 ms between readings
    try:
        with stack.open_store() as store:
            store.ensure_tables()
            wait_for(lambda: store.count(TOPICS["temperature"]) > 100, 30, "first rows")
        producers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "producer" in " ".join(p.cmdline())]
        assert len(producers) == len(TOPICS)
        for _ in range(3):
            for p in producers:
                p.suspend()
            time.sleep(0.5)  # the stall: shorter than the second after which sensors skip ticks
            for p in producers:
                p.resume()
            time.sleep(1)
        sent, stored, gap = stop_and_check(stack, proc, started_ms)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert sent > 0 and stored == sent
    assert gap <= 20 + 1, f"a series has a {gap:.0f} ms hole"


class FakeBroker:
    """A broker process busy at `cores`, on a clock the test moves (`tick`)."""

    def __init__(self, clock: list[float], cores: float):
        self.clock, self.cores, self.cpu = clock, cores, 0.0

    def tick(self, seconds: float) -> None:
        self.clock[0] += seconds
        self.cpu += seconds * self.cores

    def cpu_seconds(self) -> float:
        return self.cpu


def test_a_broker_is_renewed_when_its_cpu_doubles_or_passes_the_ceiling_but_not_when_young(monkeypatch):
    from pipeline import supervisor
    from pipeline.supervisor import CHECK_S, RENEW_MIN_AGE_S, WINDOW, BrokerCost

    clock = [1000.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])

    def cost_after(baseline: float, now: float, age_s: float) -> tuple[BrokerCost, float | None]:
        """A broker at `baseline` cores for a full window, then at `now` for another, `age_s` old."""
        broker = FakeBroker(clock, baseline)
        cost = BrokerCost(broker)
        for cores in (baseline, now):
            broker.cores = cores
            cost.samples.clear()
            for _ in range(WINDOW + 1):
                broker.tick(CHECK_S)
                measured = cost.sample()
        clock[0] = cost.started + age_s
        return cost, measured

    young, cores = cost_after(0.05, 0.2, age_s=RENEW_MIN_AGE_S - 1)  # doubled and +0.15 core
    assert cores == pytest.approx(0.2)
    assert not young.renewal_due(cores, growth=0.1, ceiling=0.5), "never before RENEW_MIN_AGE_S"
    for baseline, now, due in ((0.05, 0.2, True), (0.05, 0.12, False), (0.9, 1.0, True), (0.3, 0.45, False)):
        cost, cores = cost_after(baseline, now, age_s=RENEW_MIN_AGE_S)
        assert cost.renewal_due(cores, growth=0.1, ceiling=0.5) is due, (baseline, now)
