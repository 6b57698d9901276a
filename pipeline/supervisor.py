"""`run all`: every daemon in its own process, restarted when it crashes, stopped in order.

Children run in their own sessions so that Ctrl-C reaches only the supervisor, which stops
them in the order that loses nothing: producers deliver what they queued, writers write and
commit, the dashboard closes, and the broker goes last.

The embedded broker (Tansu, memory only) never frees a message, and its CPU per fetch grows
with the batches a partition holds (measured: 4 consumers tailing a 500 msg/s topic with a
50 ms fetch wait took it from 13 % to 78 % of a core in 60 s; idle consumers over 60,000 held
batches cost nothing extra). So the supervisor *renews* it: an empty broker starts beside the
old one on another port, gets its topics, and its own store writers; RUN_DIR/broker.address
then names it, producers switch to it (their old client delivers what it holds, the rest is
re-sent), the old writers store everything the old broker holds, and only then does the old
broker stop. Readings keep their sampling times throughout, so no series has a hole. A renewal
happens when the broker's CPU has doubled over its baseline (and grown by at least
BROKER_RENEW_CPU of a core) or passes BROKER_MAX_CPU (a broker busy from its start cannot
double), its memory has grown by BROKER_RENEW_MB, or its memory passes BROKER_MAX_MB. A crashed broker is replaced
the same way at once; producers then also re-send their last few seconds of readings, which
the dead broker may have taken before the writers stored them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException

from pipeline.admin import ensure_topics
from pipeline.broker import BrokerError, EmbeddedBroker, _port_taken, address_file, free_port, write_address
from pipeline.config import Config
from pipeline.daemon import PARENT_ENV, Stop, backoff, dies_with_us
from pipeline.producer import STOP_FLUSH_S
from pipeline.schema import TOPICS

log = logging.getLogger("supervisor")
STOP_GRACE_S = 8.0
PRODUCER_GRACE_S = STOP_FLUSH_S + 10.0  # producers give up on their queue first, and say so
STABLE_S = 60.0  # a child that ran this long gets its restart back-off reset
CHECK_S = 10.0  # how often the embedded broker's CPU and memory are sampled
WINDOW = 3  # samples averaged: the broker's cost over the last 30 s
RENEW_MIN_AGE_S = 120.0  # a broker is never renewed for CPU before it has run this long
SWITCH_S = 30.0  # longest a renewal waits for the producers to leave the old broker
DRAIN_S = 30.0  # longest a renewal (or a stop) waits for the writers to store what a broker holds
# The longest an orderly stop takes, no broker being renewed: producers, the alerter, the drain,
# writers, dashboard, broker (each given its grace before it is killed).
STOP_BUDGET_S = PRODUCER_GRACE_S + DRAIN_S + 4 * STOP_GRACE_S


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    kind: str = field(default="")
    env: dict = field(default_factory=dict)

    def start(self) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid()), **self.env}
        # Its own session: Ctrl-C reaches only the supervisor. Dies with it: nothing outlives `run all`.
        self.proc = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=dies_with_us(),  # noqa: PLW1509 - see dies_with_us
        )
        self.started = time.monotonic()
        self.restart_at = None
        where = f" on {self.env['KAFKA_BOOTSTRAP_SERVERS']}" if "KAFKA_BOOTSTRAP_SERVERS" in self.env else ""
        log.info("started %s (pid %d)%s", self.name, self.proc.pid, where)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def writers(bootstrap: str | None) -> list[Child]:
    """Store writers bound to one broker for life (bootstrap None: the configured one)."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap} if bootstrap else {}
    return [Child(f"writer {t}", _module("pipeline.run", "consumer", t), kind="writer", env=env) for t in TOPICS]


def children(with_dashboard: bool, bootstrap: str | None = None) -> list[Child]:
    kids = writers(bootstrap)
    kids += [Child(f"producer {t}", _module("pipeline.run", "producer", t), kind="producer") for t in TOPICS]
    # One alerter, following the embedded broker across renewals as the producers do (pipeline/alerter.py).
    kids.append(Child("alerter", _module("pipeline.run", "alerter"), kind="alerter"))
    if with_dashboard:
        kids.append(Child("dashboard", _module("dash_app"), kind="dashboard"))
    return kids


def stop_children(kids: list[Child], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM them all, wait for each, SIGKILL whoever outstays the grace period."""
    live = [k for k in kids if k.running()]
    for k in live:
        k.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for k in live:
        try:
            k.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", k.name, grace)
            k.proc.kill()
            k.proc.wait()


def _at(cfg: Config, bootstrap: str) -> Config:
    """cfg with its Kafka address replaced (works for a dataclass and for a pydantic model)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.replace(cfg, kafka_bootstrap_servers=bootstrap)
    return cfg.model_copy(update={"kafka_bootstrap_servers": bootstrap})


def _create_topics(cfg: Config, stop: Stop) -> bool:
    """Create the topics, retrying while Kafka cannot be reached; at least one try even when
    stopping (a broker replaced during the stop needs its topics); False once stopped."""
    attempt = 0
    while True:
        try:
            ensure_topics(cfg)
            return True
        except KafkaException as exc:
            delay = backoff(attempt)
            log.warning("cannot reach Kafka at %s (%s); retrying in %.1fs", cfg.bootstrap_servers, exc, delay)
            attempt += 1
            if stop.wait(delay):
                return False


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


class BrokerCost:
    """The embedded broker's CPU over the last WINDOW samples, and the lowest seen since it started."""

    def __init__(self, broker: EmbeddedBroker):
        self.broker = broker
        self.started = time.monotonic()
        self.samples: deque[tuple[float, float]] = deque(maxlen=WINDOW + 1)  # (monotonic, cpu seconds)
        self.baseline: float | None = None
        self.rss0: float | None = None

    def sample(self) -> float | None:
        """Cores used over the window, once the window is full."""
        self.samples.append((time.monotonic(), self.broker.cpu_seconds()))
        if len(self.samples) <= WINDOW:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        cores = (c1 - c0) / max(t1 - t0, 1e-6)
        self.baseline = cores if self.baseline is None else min(self.baseline, cores)
        return cores

    def renewal_due(self, cores: float | None, growth: float, ceiling: float) -> bool:
        if cores is None or self.baseline is None or time.monotonic() - self.started < RENEW_MIN_AGE_S:
            return False
        return cores > min(self.baseline + max(growth, self.baseline), ceiling)


class Supervisor:
    def __init__(self, cfg: Config, stop: Stop, with_dashboard: bool):
        self.cfg, self.stop, self.with_dashboard = cfg, stop, with_dashboard
        self.broker: EmbeddedBroker | None = None
        self.cost: BrokerCost | None = None
        self.generation = 0
        self.kids: list[Child] = []
        self.retired: list[tuple[EmbeddedBroker, list[Child]]] = []  # old brokers and writers not yet stopped
        self.renewals = 0

    @property
    def bootstrap(self) -> str:
        return self.broker.address if self.broker else self.cfg.bootstrap_servers

    def run(self) -> int:
        cfg = self.cfg
        if cfg.embedded_broker:
            for stale in Path(cfg.run_dir).glob("producer-*.address"):
                stale.unlink(missing_ok=True)
            self.broker = EmbeddedBroker(cfg)
            self.broker.start()
            write_address(cfg, self.broker, replay=False, generation=0)
            self.cost = BrokerCost(self.broker)
        else:
            log.info("using Kafka at %s", cfg.bootstrap_servers)
        self.kids = children(self.with_dashboard, self.broker.address if self.broker else None)
        try:
            if not _create_topics(_at(cfg, self.bootstrap), self.stop) or self.stop.is_set():
                return 0
            for k in self.kids:
                k.start()
            next_check = time.monotonic() + CHECK_S
            while not self.stop.wait(0.5):
                if self.broker and self.broker.returncode() is not None:
                    log.error("embedded broker exited with code %s; replacing it", self.broker.returncode())
                    self.renew(crashed=True)
                elif self.broker and time.monotonic() >= next_check:
                    next_check = time.monotonic() + CHECK_S
                    self._check_cost()
                _restart_crashed(self.kids)
            return 0
        finally:
            stopping = time.monotonic()
            if self.broker and self.broker.returncode() is not None:
                # Crashed as the stop came: the producers' queues and the writers' drain need a broker.
                log.error("embedded broker exited with code %s; replacing it before stopping", self.broker.returncode())
                self.renew(crashed=True)
            log.info("stopping: producers, the alerter, then writers, then the dashboard%s", ", then the broker" if self.broker else "")
            stop_children([k for k in self.kids if k.kind == "producer"], PRODUCER_GRACE_S)
            stop_children([k for k in self.kids if k.kind == "alerter"])  # it publishes what the last readings changed
            if self.broker:
                # The embedded broker forgets everything when it stops: let the writers store
                # what it (and any broker being renewed) still holds first.
                for address in [self.broker.address] + [b.address for b, _ws in self.retired]:
                    if not self._drained(address):
                        log.warning("writers did not store everything %s holds within %.0fs; the rest is lost with it", address, DRAIN_S)
            stop_children([k for k in self.kids if k.kind == "writer"] + [w for _b, ws in self.retired for w in ws])
            stop_children([k for k in self.kids if k.kind == "dashboard"])
            for old, _ws in self.retired:
                old.stop()
            if self.broker:
                self.broker.stop()
                address_file(cfg).unlink(missing_ok=True)
            log.info("all stopped in %.1fs", time.monotonic() - stopping)

    def _check_cost(self) -> None:
        cores = self.cost.sample()
        rss = self.broker.rss_mb()
        growth = self.cfg.broker_renew_cpu
        if self.cost.rss0 is None:
            self.cost.rss0 = rss
        if rss > self.cfg.broker_max_mb:
            self.renew(reason=f"it uses {rss:.0f} MB (BROKER_MAX_MB={self.cfg.broker_max_mb})")
        elif rss - self.cost.rss0 > self.cfg.broker_renew_mb:
            self.renew(reason=f"it grew by {rss - self.cost.rss0:.0f} MB of held messages")
        elif self.cost.renewal_due(cores, growth, self.cfg.broker_max_cpu):
            self.renew(reason=f"its CPU grew from {self.cost.baseline:.2f} to {cores:.2f} cores (BROKER_MAX_CPU={self.cfg.broker_max_cpu:g})")

    def _next_port(self, old: int) -> int:
        for port in (self.cfg.broker_port, self.cfg.broker_port + 1):
            if port != old and not _port_taken(port):
                return port
        return free_port()

    def renew(self, reason: str = "", crashed: bool = False) -> None:
        """Replace the embedded broker with an empty one, without a hole in any series."""
        cfg, old = self.cfg, self.broker
        began = time.monotonic()
        if not crashed:
            log.warning("renewing the embedded broker: %s", reason)
        attempt = 0
        while True:  # a crashed broker is replaced even during a stop: its producers' queues need it
            new = EmbeddedBroker(cfg, self._next_port(old.port))
            try:
                new.start()
                break
            except BrokerError as exc:
                delay = backoff(attempt)
                log.error("could not start a new embedded broker (%s); retrying in %.1fs", exc, delay)
                attempt += 1
                if not crashed or self.stop.wait(delay):
                    return  # not crashed: the old one still works; try again at the next check
        if not _create_topics(_at(cfg, new.address), self.stop):
            new.stop()
            return
        if not crashed:
            _carry_alerts(cfg, old.address, new.address)
        # New writers first (they join the new broker's groups from the earliest offset), then the
        # address switch: producers move over, and nothing reaches the new broker before its topics.
        old_writers = [k for k in self.kids if k.kind == "writer"]
        new_writers = writers(new.address)
        for k in new_writers:
            k.start()
        self.kids = [k for k in self.kids if k.kind != "writer"] + new_writers
        self.generation += 1
        write_address(cfg, new, replay=crashed, generation=self.generation)
        self.broker, self.cost = new, BrokerCost(new)
        self.retired.append((old, old_writers))
        if crashed:
            replaced = time.monotonic()
            # The rows they fetched are written on the way out; their goodbyes to the dead broker
            # take up to its session timeout (or the stop grace).
            stop_children(old_writers)
            old.stop()
            self.retired.remove((old, old_writers))
            self.renewals += 1
            log.warning("embedded broker replaced by %s in %.2fs (its old writers stopped %.1fs later); producers re-send "
                        "what the old one may have lost", new.address, replaced - began, time.monotonic() - replaced)
            return
        switched = self._wait(lambda: self._producers_on(new.address), SWITCH_S)
        if self.stop.is_set():
            return  # the stop drains the old broker (in self.retired) as well as the new one
        if not switched:
            log.warning("producers did not all leave %s within %.0fs", old.address, SWITCH_S)
        # The alerter too has read what the old broker holds (pipeline/alerter.py: left_broker).
        drained = self._wait(lambda: _writers_drained(old.address) and _alerter_left(cfg, old.address), DRAIN_S)
        if self.stop.is_set():
            return
        if not drained:
            log.warning("old writers did not store everything within %.0fs; uncommitted readings go with the old broker", DRAIN_S)
        stop_children(old_writers)
        old.stop()
        self.retired.remove((old, old_writers))
        self.renewals += 1
        log.warning("embedded broker renewed: %s -> %s in %.1fs (renewal %d)", old.address, new.address, time.monotonic() - began, self.renewals)

    def _drained(self, address: str) -> bool:
        """Wait up to DRAIN_S for the writers to store everything `address` holds. A writer that
        crashed (or was restarting) when the stop came is restarted: the drain needs it."""
        deadline = time.monotonic() + DRAIN_S
        while not _writers_drained(address):
            if time.monotonic() > deadline:
                return False
            _restart_crashed([k for k in self.kids if k.kind == "writer"] + [w for _b, ws in self.retired for w in ws])
            time.sleep(0.25)
        return True

    def _producers_on(self, address: str) -> bool:
        for k in self.kids:
            if k.kind != "producer" or not k.running():
                continue
            topic = k.argv[-1]
            try:
                if (Path(self.cfg.run_dir) / f"producer-{topic}.address").read_text() != address:
                    return False
            except OSError:
                return False
        return True

    def _wait(self, predicate, timeout: float) -> bool:
        """Wait for predicate() while keeping producers and the dashboard alive; gives up on stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            if predicate():
                return True
            _restart_crashed([k for k in self.kids if k.kind != "writer"])
            self.stop.wait(0.25)
        return predicate()


def _carry_alerts(cfg: Config, old: str, new: str) -> None:
    """The alerter's changelog onto the new broker before anyone switches to it (pipeline/alerter.py)."""
    from pipeline.alerter import carry_changelog

    try:
        log.info("carried %d alert(s) from %s to %s", carry_changelog(cfg, old, new), old, new)
    except KafkaException as exc:
        log.warning("could not carry the alerts from %s to %s (%s); a live alerter publishes its own", old, new, exc)


def _alerter_left(cfg: Config, address: str) -> bool:
    from pipeline.alerter import left_broker

    return left_broker(cfg, address)


def _writers_drained(bootstrap: str) -> bool:
    """True when every writer group has committed up to the end of its topic on that broker."""
    from pipeline.kafka import group_progress
    from pipeline.writer import group_id

    for name, spec in TOPICS.items():
        try:
            done, end = group_progress(bootstrap, name, group_id(spec), timeout=5)
        except KafkaException:
            return False
        if done < end:
            return False
    return True


def run(cfg: Config, stop: Stop, with_dashboard: bool = True) -> int:
    return Supervisor(cfg, stop, with_dashboard).run()
