"""Test plumbing: free ports, polling, process control and an isolated product instance."""
from __future__ import annotations

import bisect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll until predicate() is truthy; fail with `what` on timeout. Returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


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


@dataclass
class Stack:
    """Environment of one isolated product instance: its own broker port, store and run dir."""

    env: dict
    tmp: Path

    @property
    def store_url(self) -> str:
        return self.env["STORE_URL"]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['BROKER_PORT']}"

    def config(self):
        from unittest import mock

        from pipeline import config

        with mock.patch.dict(os.environ, self.env):
            return config.load()

    def spawn(self, *args: str, log_name: str | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{log_name or '-'.join(args)}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    @contextmanager
    def running(self, *args: str, log_name: str | None = None):
        proc = self.spawn(*args, log_name=log_name)
        try:
            yield proc
        finally:
            stop_process(proc)


def bucket_check(drawn: dict, stored: dict, width: int, start: int, end: int) -> tuple[int, int]:
    """(buckets whose drawn points are exactly the store's lowest/highest/last, buckets checked)."""
    exact = checked = 0
    for key, readings in stored.items():
        if key not in drawn:
            continue
        xs = drawn[key][0]
        by_bucket: dict[int, list] = defaultdict(list)
        for ts, value in readings:
            by_bucket[ts // width].append((ts, value))
        for bucket, points in by_bucket.items():
            if bucket * width < start or (bucket + 1) * width > end:
                continue
            low = min(points, key=lambda p: p[1])
            high = max(points, key=lambda p: p[1])
            want = sorted({low[0], high[0], points[-1][0]})
            got = xs[bisect.bisect_left(xs, bucket * width):bisect.bisect_left(xs, (bucket + 1) * width)]
            checked += 1
            exact += got == want
    return exact, checked
