"""Producer daemon: one per topic, emitting a reading per sensor RATE times a second."""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import msgspec
from confluent_kafka import KafkaError, Producer

from pipeline import kafka
from pipeline.broker import current_address, read_address
from pipeline.config import Config
from pipeline.daemon import Every, Stop
from pipeline.schema import TOPICS, Topic
from pipeline.simulate import RoomClimate, SimulatedMachine, ThisMachine, device_names, room_names

REPORT_S = 10.0
RETIRE_S = 3.0  # after a broker switch, how long the old client may deliver before its rest is re-sent
REPLAY_S = 15.0  # after a broker crash, the last seconds of readings sent again to the new broker (a replacement took up to 7 s on a loaded machine)
STOP_FLUSH_S = 60.0  # longest a stopping producer waits for the broker to take its queue


def client_settings(cfg: Config) -> dict:
    """As many produce requests in flight per broker connection as the topic has partitions.

    librdkafka sends a request per partition: with one in flight, a tick's partitions reached the
    broker one round trip after another, and the dashboard drew a tick in parts, the last part a
    whole page frame later (docs/performance.md). Not librdkafka's default (a million): then it
    sends a request every linger.ms whatever the broker's latency, and once the embedded broker
    took longer than that to answer (a busy machine, a broker holding more), the queue grew
    without bound (two brokers under the same 550 msg/s on a loaded 2-core machine: 19,100
    readings queued after 150 s with the default, at most 809 with one in flight). With few in
    flight, what accumulates while they are out goes into the next requests: when the broker is
    slow, batches grow instead of the queue. A retried request may land after a later one
    (idempotence is off, see kafka.producer): the store upserts, and the live page, which draws
    only readings newer than its last, shows it on its next history load."""
    return {"max.in.flight.requests.per.connection": cfg.partitions}


def sensors(spec: Topic, cfg: Config) -> list[tuple[str, Callable[[int], dict]]]:
    """(key, reading function) for each sensor of the topic; the function takes epoch ms."""
    if spec.name in ("temperature", "humidity"):
        index, unit = (0, "°C") if spec.name == "temperature" else (1, "%")

        def room_reader(room: str):
            climate = RoomClimate(room)
            return lambda ms: {"ts": ms, "room": room, "value": climate.read(ms / 1000)[index], "unit": unit}

        return [(room, room_reader(room)) for room in room_names(cfg.rooms)]

    def device_reader(device: str, machine):
        def read(ms: int) -> dict:
            cpu, used, total = machine.read(ms / 1000)
            return {"ts": ms, "device": device, "cpu_percent": cpu, "memory_used": used, "memory_total": total}

        return read

    names = device_names(cfg.devices)
    return [(d, device_reader(d, ThisMachine() if i == 0 else SimulatedMachine(d))) for i, d in enumerate(names)]


class _Outbox:
    """The producer's Kafka clients: the current one, and the one being retired after a broker switch.

    A switch (RUN_DIR/broker.address names a new embedded broker) makes a new client at once; the
    old one keeps delivering what it holds for RETIRE_S, then whatever it still holds is purged
    and produced again on the new client, so nothing queued is lost. After a crash ("replay" in
    the record) the readings of the last REPLAY_S seconds are produced again too: the dead broker
    may have acknowledged them before the writers stored them. A reading sent twice is harmless
    (the store upserts on (ts, key); the dashboard drops points not newer than its last).
    """

    def __init__(self, cfg: Config, spec: Topic, log: logging.Logger):
        self.cfg, self.spec, self.log = cfg, spec, log
        self.record = read_address(cfg) if cfg.embedded_broker else None
        self.address = current_address(cfg)
        self.current = kafka.producer(cfg, f"producer-{spec.name}", bootstrap=self.address, overrides=client_settings(cfg))
        self.retiring: list[tuple[Producer, float]] = []
        self.recent: deque[tuple[float, bytes, bytes]] = deque()  # (monotonic, key, value) for replay
        self.sent = self.failed = self.resent = 0
        self.last_error = ""
        self.next_check = 0.0
        self.acked = ""
        self._ack()

    def _delivered(self, err, msg) -> None:
        if err is None:
            return
        if err.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            self._produce(msg.key(), msg.value())  # purged from a retired client: send it again
            self.resent += 1
            return
        self.failed += 1
        self.last_error = err.str()

    def _produce(self, key: bytes, value: bytes, stop: Stop | None = None) -> None:
        while True:
            try:
                self.current.produce(self.spec.name, key=key, value=value, on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: the broker is slow or down
                self.current.poll(0.1)
                self.poll_retiring()
                if stop is not None and stop.is_set():
                    return

    def send(self, key: bytes, value: bytes, stop: Stop) -> None:
        self._produce(key, value, stop)
        self.sent += 1
        now = time.monotonic()
        self.recent.append((now, key, value))
        while self.recent and self.recent[0][0] < now - REPLAY_S:
            self.recent.popleft()

    def follow(self) -> None:
        """Switch to the broker RUN_DIR/broker.address names, if it changed (checked every 0.2 s)."""
        if not self.cfg.embedded_broker or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + 0.2
        record = read_address(self.cfg)
        if record is None or record["address"] == self.address:
            return
        self.log.info("switching to the embedded broker at %s (was %s)%s", record["address"], self.address,
                      f"; re-sending the last {REPLAY_S:.0f}s of readings" if record.get("replay") else "")
        self.retiring.append((self.current, time.monotonic() + (0 if record.get("replay") else RETIRE_S)))
        self.address, self.record = record["address"], record
        self.current = kafka.producer(self.cfg, f"producer-{self.spec.name}", bootstrap=self.address, overrides=client_settings(self.cfg))
        if record.get("replay"):
            for _t, key, value in list(self.recent):
                self._produce(key, value)
                self.resent += 1
        self.poll_retiring()

    def poll_retiring(self) -> None:
        for old, deadline in list(self.retiring):
            old.poll(0)
            if len(old) and time.monotonic() >= deadline:
                old.purge(in_queue=True, in_flight=True)
                old.poll(0)  # delivery reports of the purged readings re-send them on the current client
            if not len(old):
                self.retiring.remove((old, deadline))
        if not self.retiring:
            self._ack()

    def _ack(self) -> None:
        """Tell the supervisor this producer now sends only to self.address (nothing left on an old broker)."""
        if self.cfg.embedded_broker and self.acked != self.address:
            path = Path(self.cfg.run_dir) / f"producer-{self.spec.name}.address"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(self.address)
                self.acked = self.address
            except OSError:
                pass

    def flush(self, timeout: float) -> int:
        """Deliver what is queued within `timeout` seconds; the number of readings left. It keeps
        following the broker: one that crashed as we stopped is replaced, and takes the queue."""
        deadline = time.monotonic() + timeout
        self.next_check = 0.0  # look now: the broker may have been replaced as we were stopped
        while True:
            self.follow()
            self.poll_retiring()
            if not len(self) or time.monotonic() >= deadline:
                return len(self)
            self.current.flush(min(0.2, deadline - time.monotonic()))

    def __len__(self) -> int:
        return len(self.current) + sum(len(p) for p, _ in self.retiring)


def first_tick_ms(spec: Topic, period_ms: float, now_ms: float) -> int:
    """When a topic's producer first samples: the next instant, on the wall clock, at the
    topic's own phase of the period (with three topics at 0, 1/3 and 2/3 of it). Independent
    devices do not all report in the same instant, and daemons started together would
    otherwise tick together for as long as they run."""
    phase_ms = period_ms * list(TOPICS).index(spec.name) / len(TOPICS)
    return math.ceil(math.ceil((now_ms - phase_ms) / period_ms) * period_ms + phase_ms)


def run(cfg: Config, spec: Topic, stop: Stop) -> None:
    log = logging.getLogger(f"producer.{spec.name}")
    readers = sensors(spec, cfg)
    keyed = [(key.encode(), read) for key, read in readers]
    encode = msgspec.json.Encoder().encode  # several times cheaper than json.dumps: at high rates a reading's cost adds up
    out = _Outbox(cfg, spec, log)

    log.info(
        "sending %s for %d %s (%s) at %g/s each to %s",
        spec.name, len(readers), spec.key + "s", ", ".join(k for k, _ in readers), cfg.rate, out.address,
    )
    # Tick k samples at wall0 + k * period: each reading keeps its own sampling time even when
    # the loop runs late and catches up (the store upserts on (ts, key), so two readings of one
    # sensor must never share a millisecond; RATE is at most 1000).
    period_ms = 1000.0 / cfg.rate
    now_ms = time.time_ns() / 1e6
    wall0 = first_tick_ms(spec, period_ms, now_ms)
    mono0, k = time.monotonic() + (wall0 - now_ms) / 1000, 0
    report = Every(REPORT_S)
    reported_sent, reported_failed = 0, 0
    while not stop.is_set():
        out.follow()
        due = math.floor((time.monotonic() - mono0) * 1000 / period_ms)  # -1 before the first tick
        if due - k > cfg.rate:  # over a second behind (the machine stalled): sensors skip what they missed
            log.warning("fell %.1fs behind; skipping %d ticks", (due - k) * period_ms / 1000, due - k)
            k = due
        while k <= due and not stop.is_set():
            ms = wall0 + int(k * period_ms)
            for key, read in keyed:
                out.send(key, encode(read(ms)), stop)
            k += 1
        out.poll_retiring()
        until_next = mono0 + k * period_ms / 1000 - time.monotonic()
        if period_ms >= cfg.producer_linger_ms and until_next > 0:
            # Ticks no more often than linger.ms: this tick's readings are all there is until the
            # next one, so waiting out linger.ms would only delay them. flush() sends at once;
            # batches stay one per tick. Faster ticks share a batch per linger.ms.
            out.current.flush(min(until_next, 0.2))
        else:
            out.current.poll(0)
        elapsed = report()
        if elapsed:
            new_failed = out.failed - reported_failed
            log.info(
                "sent %d readings in %.0fs (%.1f/s), %d failed%s, %d waiting for the broker%s",
                out.sent - reported_sent, elapsed, (out.sent - reported_sent) / elapsed, new_failed,
                f" (last: {out.last_error})" if new_failed else "", len(out),
                f", {out.resent} re-sent after broker switches" if out.resent else "",
            )
            reported_sent, reported_failed = out.sent, out.failed
        stop.wait(max(0.0, mono0 + k * period_ms / 1000 - time.monotonic()))
    # Deliver everything queued before exiting (the supervisor waits longer than this bound).
    log.info("stopping: delivering %d queued readings (up to %.0fs)", len(out), STOP_FLUSH_S)
    left = out.flush(STOP_FLUSH_S)
    if left:
        log.error("gave up after %.0fs: %d readings were never delivered", STOP_FLUSH_S, left)
    log.info("stopped after %d readings; %d failed, %d undelivered at exit", out.sent, out.failed, left)
