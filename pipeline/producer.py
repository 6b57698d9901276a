"""Producer daemon: one per topic, emitting a reading per sensor RATE times a second."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from pipeline import kafka
from pipeline.config import Config
from pipeline.daemon import Every
from pipeline.schema import Topic
from pipeline.simulate import RoomClimate, SimulatedMachine, ThisMachine, device_names, room_names

REPORT_S = 10.0


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


def run(cfg: Config, spec: Topic, stop: threading.Event) -> None:
    log = logging.getLogger(f"producer.{spec.name}")
    readers = sensors(spec, cfg)
    producer = kafka.producer(cfg, f"producer-{spec.name}")
    sent = failed = 0
    last_error = ""

    def delivered(err, _msg):
        nonlocal failed, last_error
        if err is not None:
            failed += 1
            last_error = err.str()

    log.info(
        "sending %s for %d %s (%s) at %g/s each to %s",
        spec.name, len(readers), spec.key + "s", ", ".join(k for k, _ in readers), cfg.rate, cfg.bootstrap_servers,
    )
    # Tick k samples at wall0 + k * period: each reading keeps its own sampling time even when
    # the loop runs late and catches up (the store upserts on (ts, key), so two readings of one
    # sensor must never share a millisecond; RATE is at most 1000).
    period_ms = 1000.0 / cfg.rate
    mono0, wall0, k = time.monotonic(), time.time_ns() // 1_000_000, 0
    report = Every(REPORT_S)
    reported_sent, reported_failed = 0, 0
    while not stop.is_set():
        due = int((time.monotonic() - mono0) * 1000 / period_ms)
        if due - k > cfg.rate:  # over a second behind (the machine stalled): sensors skip what they missed
            log.warning("fell %.1fs behind; skipping %d ticks", (due - k) * period_ms / 1000, due - k)
            k = due
        while k <= due and not stop.is_set():
            ms = wall0 + int(k * period_ms)
            for key, read in readers:
                payload = json.dumps(read(ms)).encode()
                while True:
                    try:
                        producer.produce(spec.name, key=key.encode(), value=payload, on_delivery=delivered)
                        break
                    except BufferError:  # local queue full: the broker is slow or down
                        producer.poll(0.1)
                        if stop.is_set():
                            break
                sent += 1
            k += 1
        until_next = mono0 + k * period_ms / 1000 - time.monotonic()
        if until_next * 1000 > cfg.producer_linger_ms:
            # Quiet: this tick's readings are all there is until the next tick, so waiting out
            # linger.ms would only delay them. flush() sends at once; batches stay one per tick.
            producer.flush(until_next)
        else:
            producer.poll(0)
        elapsed = report()
        if elapsed:
            new_failed = failed - reported_failed
            log.info(
                "sent %d readings in %.0fs (%.1f/s), %d failed%s, %d waiting for the broker",
                sent - reported_sent, elapsed, (sent - reported_sent) / elapsed, new_failed,
                f" (last: {last_error})" if new_failed else "", len(producer),
            )
            reported_sent, reported_failed = sent, failed
        stop.wait(max(0.0, mono0 + k * period_ms / 1000 - time.monotonic()))
    left = producer.flush(10)
    log.info("stopped after %d readings; %d failed, %d undelivered at exit", sent, failed, left)
