"""Test plumbing: free ports, polling, process control and an isolated product instance."""
from __future__ import annotations

import bisect
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Self

import psutil
import pytest

from dash_app.charts import CHARTS
from dash_app.figures import envelope_id
from pipeline.daemon import dies_with_us

ROOT = Path(__file__).resolve().parent.parent
# Every trace of every chart on the page: ["<chart> <meta>", xs, ys].
TRACES = """return Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => {
  const chart = JSON.parse(gd.closest('.dash-graph').id).id;
  return gd.data.map(t => [chart + ' ' + t.meta, Array.from(t.x), Array.from(t.y)]);
});"""


EMBEDDED, REAL = "embedded", "kafka+questdb"
# A test run on each backend: the embedded broker with SQLite (the default), and Apache Kafka with
# QuestDB (pipeline.servers, started by conftest's `stack` fixture when the test asks for REAL).
on_each_backend = pytest.mark.parametrize("stack", [EMBEDDED, REAL], indirect=True)
# Apache Kafka as a three-node cluster (conftest's `kafka_cluster`), SQLite as the store: the failover tests.
CLUSTER = "kafka-cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1, ignore: tuple[type[BaseException], ...] = ()):
    """Poll until predicate() is truthy; fail with `what` on timeout. Returns the value. An
    exception of a type in `ignore` (a server not answering yet, a page not rendered yet)
    counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def producer_totals(log: str) -> dict[str, tuple[int, int, int]]:
    """What each producer said as it stopped, by topic: (sent, failed, undelivered) readings."""
    return {topic: (int(n), int(failed), int(left)) for topic, n, failed, left in
            re.findall(r"producer\.(\w+) +stopped after (\d+) readings; (\d+) failed, (\d+) undelivered", log)}


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> int:
    """Signal `proc`, wait `timeout` s, then SIGKILL it and every process it started (a
    supervisor's children run in sessions of their own: they would outlive it as orphans)."""
    if proc.poll() is None:
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in family:
            try:
                child.kill()
            except psutil.Error:
                pass
    return proc.returncode


# Headless Chromium as root on a machine without a network (DESIGN.md, "Browser tests").
CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
    # A headless page is nobody's foreground tab: keep Chromium from lowering its priority and
    # throttling its timers as it does for background tabs, which a person's open page is not.
    "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
)


def chrome_options(*extra: str):
    """Selenium options for CHROME_FLAGS with a fresh profile; `extra` flags come last (and win)."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}", *extra):
        options.add_argument(flag)
    return options


def browser(*extra: str):
    """Debian's headless Chromium through chromedriver (benchmarks, the screenshot script)."""
    from selenium import webdriver

    return webdriver.Chrome(options=chrome_options(*extra))


class Stack:
    """One isolated product instance: its own broker and dashboard ports, RUN_DIR, SQLite store
    (unless `store_url` names another) and environment, in `tmp`, which also holds each
    process's log. As a context manager, it stops on exit every process it started that still
    runs (by PID, descendants too)."""

    def __init__(self, tmp: Path, store_url: str | None = None, **env: str):
        self.tmp = Path(tmp)
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "QUESTDB_PG_URL")}
        self.env.update(
            BROKER_PORT=str(free_port()), DASH_PORT=str(free_port()), RUN_DIR=str(self.tmp / "run"),
            STORE_URL=store_url or f"sqlite:///{self.tmp / 'store.db'}", PYTHONUNBUFFERED="1",
        )
        self.env.update(env)

    @property
    def store_url(self) -> str:
        return self.env["STORE_URL"]

    def open_store(self):
        """The store this stack's processes write (STORE_URL, and QUESTDB_PG_URL for QuestDB)."""
        from pipeline.store import open_store

        return open_store(self.store_url, self.env.get("QUESTDB_PG_URL", ""))

    @property
    def embedded(self) -> bool:
        """True on the embedded broker (which `run all` and `broker()` start), False on a Kafka
        named by KAFKA_BOOTSTRAP_SERVERS."""
        return not self.env.get("KAFKA_BOOTSTRAP_SERVERS")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['BROKER_PORT']}" if self.embedded else self.env["KAFKA_BOOTSTRAP_SERVERS"]

    def config(self):
        """The product's Config as the processes this stack spawns see it."""
        from unittest import mock

        from pipeline import config

        with mock.patch.dict(os.environ, self.env, clear=True):
            return config.load()

    def spawn(self, *args: str, log_name: str | None = None, env: dict | None = None) -> subprocess.Popen:
        """`python -m ARGS` in the repo root with this stack's environment (plus `env`); its
        output goes to LOG_NAME.log (default: the arguments joined by "-")."""
        with open(self.tmp / f"{log_name or '-'.join(args)}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", *args], cwd=ROOT, env={**self.env, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=dies_with_us(),  # noqa: PLW1509 - nothing outlives a test run that crashed
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, name: str, text: str, proc: subprocess.Popen, timeout: float) -> None:
        """Wait for `text` in NAME.log; fail at once, with the log, if `proc` exits first."""
        def seen() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-2000:]}")
            return text in self.log(name)

        wait_for(seen, timeout, f"{text!r} in {name}.log", interval=0.05)

    def store_what_kafka_kept(self, sent: int, timeout: float = 60) -> None:
        """On Apache Kafka a stop of `run all` leaves in Kafka what its writers had not stored
        (only the embedded broker, which forgets it, is drained first): start writers again until
        the store holds `sent` readings in all. Nothing to do on the embedded broker."""
        if self.embedded:
            return
        from pipeline.schema import TOPICS

        with self.open_store() as store, ExitStack() as writers:
            for name in TOPICS:
                writers.enter_context(self.running("pipeline.run", "consumer", name, log_name=f"writer-{name}"))
            wait_for(lambda: sum(store.count(spec) for spec in TOPICS.values()) >= sent, timeout, "writers started again to store what Kafka kept")

    @contextmanager
    def running(self, *args: str, log_name: str | None = None):
        proc = self.spawn(*args, log_name=log_name)
        try:
            yield proc
        finally:
            stop_process(proc)

    @contextmanager
    def broker(self, partitions: int | None = None):
        """The product's topics (PARTITIONS each, if given) on the embedded broker, started here
        (its process is yielded), or on the Kafka that KAFKA_BOOTSTRAP_SERVERS names (None)."""
        from pipeline.admin import ensure_topics

        if partitions is not None:
            self.env["PARTITIONS"] = str(partitions)
        if not self.embedded:
            ensure_topics(self.config())
            # Topics deleted and created again under the same names (conftest's reset): a broker
            # can answer NOT_LEADER_FOR_PARTITION for a moment after they are created.
            from confluent_kafka import KafkaException

            from pipeline.kafka import group_progress
            from pipeline.schema import TOPICS

            wait_for(lambda: [group_progress(self.bootstrap, name, "ready-check") for name in TOPICS], 30,
                     "Kafka to serve the new topics", ignore=(KafkaException,))
            yield None
            return
        with self.running("pipeline.run", "broker", log_name="broker") as proc:
            self.wait_log("broker", "listening", proc, 30)
            ensure_topics(self.config())
            yield proc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


def bucket_check(drawn: dict, stored: dict, width: int, start: int, end: int) -> tuple[int, int]:
    """(buckets drawn exactly as the store holds them, buckets checked). `drawn`: "<chart> <meta>"
    -> (xs, ys) of every trace; `stored`: "<chart> <key>|<field>" -> [(ts, value)] in time order.
    A bucket is exact when its one line point is its last reading, and its envelope segment (at
    the bucket's start) spans its lowest to highest value, or it has none when they are equal."""
    scales = {c.id: c.scale for c in CHARTS}
    exact = checked = 0
    for key, readings in stored.items():
        if key not in drawn:
            continue
        chart, series = key.split(" ", 1)
        xs, ys = drawn[key]
        segments: dict[int, list] = defaultdict(list)
        for x, y in zip(*drawn.get(f"{chart} {envelope_id(*series.split('|'))}", ([], [])), strict=True):
            if y is not None:
                segments[x].append(y)
        by_bucket: dict[int, list] = defaultdict(list)
        for ts, value in readings:
            by_bucket[ts // width].append((ts, value * scales[chart]))
        for bucket, points in by_bucket.items():
            if bucket * width < start or (bucket + 1) * width > end:
                continue
            lo, hi = bisect.bisect_left(xs, bucket * width), bisect.bisect_left(xs, (bucket + 1) * width)
            values = [v for _, v in points]
            want_span = [min(values), max(values)] if min(values) < max(values) else []
            checked += 1
            exact += list(zip(xs[lo:hi], ys[lo:hi])) == [points[-1]] and sorted(segments.get(bucket * width, [])) == want_span
    return exact, checked
