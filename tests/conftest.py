"""Shared test plumbing: real processes (embedded broker, pipeline daemons) on free ports.

Everything a test starts is stopped in `finally`, by PID, and binds to 127.0.0.1 only.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_setup_options():
    """Chrome flags for dash_duo: headless Chromium as root, on a machine without a network."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for flag in (
        "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1200",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    return options


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
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


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
        log = open(self.tmp / f"{log_name or '-'.join(args)}.log", "ab")
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


@pytest.fixture
def stack(tmp_path) -> Stack:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS",)}
    env.update(
        BROKER_PORT=str(free_port()),
        STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        RUN_DIR=str(tmp_path / "run"),
        DASH_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return Stack(env, tmp_path)


@pytest.fixture
def broker(stack: Stack):
    """A real embedded broker process with the product's topics created."""
    with stack.running("pipeline.run", "broker") as proc:
        wait_for(lambda: "listening" in stack.log("pipeline.run-broker") or proc.poll() is not None, 20, "the broker to start")
        assert proc.poll() is None, stack.log("pipeline.run-broker")
        from pipeline.admin import ensure_topics

        ensure_topics(stack.config())
        yield proc
