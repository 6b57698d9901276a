"""`run all`: every daemon in its own process, restarted when it crashes, stopped in order.

Children run in their own sessions so that Ctrl-C reaches only the supervisor, which stops
them in the order that loses nothing: producers flush, writers write and commit, the
dashboard closes, and the broker goes last.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from pipeline.admin import ensure_topics
from pipeline.broker import EmbeddedBroker
from pipeline.config import Config
from pipeline.daemon import PARENT_ENV, backoff
from pipeline.schema import TOPICS

log = logging.getLogger("supervisor")
STOP_GRACE_S = 8.0
STABLE_S = 60.0  # a child that ran this long gets its restart back-off reset
MEMORY_CHECK_S = 30.0
DRAIN_S = 20.0  # longest a broker recycle waits for the writers to store what was produced


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    kind: str = field(default="")

    def start(self) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def children(with_dashboard: bool) -> list[Child]:
    kids = [Child(f"writer {t}", _module("pipeline.run", "consumer", t), kind="writer") for t in TOPICS]
    kids += [Child(f"producer {t}", _module("pipeline.run", "producer", t), kind="producer") for t in TOPICS]
    if with_dashboard:
        kids.append(Child("dashboard", _module("dash_app"), kind="dashboard"))
    return kids


def stop_children(kids: list[Child]) -> None:
    """SIGTERM them all, wait for each, SIGKILL whoever outstays the grace period."""
    live = [k for k in kids if k.running()]
    for k in live:
        k.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for k in live:
        try:
            k.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", k.name, STOP_GRACE_S)
            k.proc.kill()
            k.proc.wait()


def _create_topics(cfg: Config, stop: threading.Event) -> bool:
    attempt = 0
    while not stop.is_set():
        try:
            ensure_topics(cfg)
            return True
        except KafkaException as exc:
            delay = backoff(attempt)
            log.warning("cannot reach Kafka at %s (%s); retrying in %.1fs", cfg.bootstrap_servers, exc, delay)
            attempt += 1
            stop.wait(delay)
    return False


def run(cfg: Config, stop: threading.Event, with_dashboard: bool = True) -> int:
    broker = EmbeddedBroker(cfg) if cfg.embedded_broker else None
    if broker:
        broker.start()
    else:
        log.info("using Kafka at %s", cfg.bootstrap_servers)
    kids = children(with_dashboard)
    try:
        if not _create_topics(cfg, stop):
            return 0
        for k in kids:
            k.start()
        next_memory_check = time.monotonic() + MEMORY_CHECK_S
        while not stop.wait(0.5):
            if broker and broker.returncode() is not None:
                _restart_broker(cfg, broker, kids, stop)
            if broker and time.monotonic() > next_memory_check:
                next_memory_check = time.monotonic() + MEMORY_CHECK_S
                if broker.rss_mb() > cfg.broker_max_mb:
                    _recycle_broker(cfg, broker, kids, stop)
            _restart_crashed(kids)
        return 0
    finally:
        log.info("stopping: producers, then writers, then the dashboard%s", ", then the broker" if broker else "")
        for kind in ("producer", "writer", "dashboard"):
            stop_children([k for k in kids if k.kind == kind])
        if broker:
            broker.stop()
        log.info("all stopped")


def _restart_crashed(kids: list[Child]) -> None:
    now = time.monotonic()
    for k in kids:
        if k.proc is None or k.running():
            continue
        if k.restart_at is None:
            if now - k.started > STABLE_S:
                k.restarts = 0
            delay = backoff(k.restarts, cap=30.0)
            log.error("%s exited with code %s; restarting in %.1fs", k.name, k.proc.returncode, delay)
            k.restart_at = now + delay
            k.restarts += 1
        elif now >= k.restart_at:
            k.start()


def _restart_broker(cfg: Config, broker: EmbeddedBroker, kids: list[Child], stop: threading.Event) -> None:
    # The embedded broker keeps everything in memory: a crash loses its topics and offsets.
    # Producers are stopped first so that none of them auto-creates a topic with the broker's
    # default partition count before topic admin has made it properly.
    log.error("embedded broker exited with code %s; restarting it, then topics and producers", broker.returncode())
    producers = [k for k in kids if k.kind == "producer"]
    stop_children(producers)
    broker.start()
    _resume_producers(cfg, producers, stop)


def _recycle_broker(cfg: Config, broker: EmbeddedBroker, kids: list[Child], stop: threading.Event) -> None:
    # Tansu never frees a message (no retention), so a long run grows without bound. The store
    # holds the history; the broker only needs what the writers have not stored yet. So: stop
    # the producers, let the writers drain, and start an empty broker.
    log.warning("embedded broker uses %.0f MB (BROKER_MAX_MB=%d): recycling it", broker.rss_mb(), cfg.broker_max_mb)
    producers = [k for k in kids if k.kind == "producer"]
    stop_children(producers)
    if not _writers_drained(cfg, time.monotonic() + DRAIN_S):
        log.warning("writers did not store everything within %.0fs; uncommitted readings go with the old broker", DRAIN_S)
    broker.stop()
    broker.start()
    _resume_producers(cfg, producers, stop)


def _resume_producers(cfg: Config, producers: list[Child], stop: threading.Event) -> None:
    if _create_topics(cfg, stop):
        for k in producers:
            k.start()


def _writers_drained(cfg: Config, deadline: float) -> bool:
    """True once every writer group has committed up to the end of its topic."""
    from pipeline.kafka import group_progress
    from pipeline.writer import group_id

    pending = dict(TOPICS)
    while pending and time.monotonic() < deadline:
        for name, spec in list(pending.items()):
            try:
                done, end = group_progress(cfg.bootstrap_servers, name, group_id(spec), timeout=5)
                if done >= end:
                    del pending[name]
            except KafkaException:
                pass
        time.sleep(0.5)
    return not pending
