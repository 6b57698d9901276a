"""Shared fixtures: real processes (embedded broker, `run all`, pipeline daemons) on free ports.

Everything a test starts is stopped in `finally`, by PID, and binds to 127.0.0.1 only.
"""
from __future__ import annotations

import signal

import pytest

from pipeline.schema import TOPICS
from pipeline.store import open_store
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import Stack, chrome_options, stop_process, wait_for


def pytest_setup_options():
    """Chrome flags for dash_duo: headless Chromium as root, on a machine without a network."""
    return chrome_options("--window-size=1400,1200")


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path) as instance:
        yield instance


@pytest.fixture
def broker(stack: Stack):
    """A real embedded broker process with the product's topics created."""
    with stack.broker() as proc:
        yield proc


@pytest.fixture
def pipeline(stack, request):
    """`run all --no-dashboard` at 2 readings/s per sensor (one per live bucket: raw points), or
    at the rate a test asks for with `@pytest.mark.parametrize("pipeline", [RATE], indirect=True)`."""
    stack.env["RATE"] = str(getattr(request, "param", 2))  # the dashboard's too, as `run all --rate` gives it
    proc = stack.spawn("pipeline.run", "all", "--no-dashboard", log_name="all")
    try:
        with open_store(stack.store_url) as store:
            store.ensure_tables()
            wait_for(lambda: all(store.count(s) > 0 for s in TOPICS.values()), 30, "rows in every table")
        yield stack
    finally:
        # `run all` stops in order and waits for its writers to store everything (README), which
        # takes longer on a busy machine: give it the time it allows itself.
        code = stop_process(proc, signal.SIGINT, STOP_BUDGET_S)
        assert code == 0, f"run all exited with {code}:\n{stack.log('all')[-3000:]}"


@pytest.fixture
def dashboard(dash_duo, pipeline):
    """The Dash app in this process (dash_duo), with its live feed, on the `pipeline` stack."""
    from dash_app.app import create_app
    from dash_app.services import Services

    services = Services.from_config(pipeline.config()).start()
    try:
        dash_duo.start_server(create_app(services))
        yield dash_duo, services
    finally:
        services.stop()
