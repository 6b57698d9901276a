"""Shared fixtures: real processes (embedded broker, pipeline daemons) on free ports.

Everything a test starts is stopped in `finally`, by PID, and binds to 127.0.0.1 only.
"""
from __future__ import annotations

import os

import pytest

from tests.helpers import Stack, chrome_options, free_port, wait_for


def pytest_setup_options():
    """Chrome flags for dash_duo: headless Chromium as root, on a machine without a network."""
    return chrome_options("--window-size=1400,1200")


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
