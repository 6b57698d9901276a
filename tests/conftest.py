"""Shared fixtures: real processes (embedded broker, `run all`, pipeline daemons) on free ports.

Everything a test starts is stopped in `finally`, by PID, and binds to 127.0.0.1 only.

Apache Kafka and QuestDB (pipeline.servers) start once per session, when the first test that
needs them runs (`kafka_server`, `questdb_server`), and each such test starts from an empty
server: every topic and group deleted, every table dropped (about a second; a fresh pair of
servers costs 10-20 s per test here). Without Java or Maven those tests skip saying so, except
under CI (CI=true), where that is a failure: a green CI run proves they ran.
"""
from __future__ import annotations

import os
import signal

import pytest

from pipeline.schema import TOPICS
from pipeline.servers import Kafka, QuestDB, ServersUnavailable
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import CLUSTER, EMBEDDED, REAL, Stack, chrome_options, stop_process, wait_for

_servers: list = []  # the real servers this session started, for the logs of a failed test


def pytest_setup_options():
    """Chrome flags for dash_duo: headless Chromium as root, on a machine without a network."""
    return chrome_options("--window-size=1400,1200")


def _started(server):
    """`server` started and answering, or the test skipped (failed under CI) with the reason."""
    try:
        server.start().wait_ready()
    except ServersUnavailable as exc:
        server.close()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run every backend: {exc}", pytrace=False)
        pytest.skip(str(exc))
    _servers.append(server)
    return server


@pytest.fixture(scope="session")
def kafka_server():
    """A single-node Apache Kafka for the session."""
    server = _started(Kafka())
    yield server
    server.close()


@pytest.fixture(scope="session")
def kafka_cluster():
    """A three-node Apache Kafka cluster for the session (the failover tests kill and restart its nodes)."""
    server = _started(Kafka(3))
    yield server
    server.close()


@pytest.fixture(scope="session")
def questdb_server():
    """A QuestDB for the session."""
    server = _started(QuestDB())
    yield server
    server.close()


@pytest.fixture
def questdb(questdb_server):
    """The session's QuestDB with no tables."""
    questdb_server.reset()
    return questdb_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on a real server gets the end of each server's log in its report."""
    report = (yield).get_result()
    if report.failed and ("questdb" in item.fixturenames or f"[{REAL}" in item.nodeid or f"[{CLUSTER}" in item.nodeid or "[questdb" in item.nodeid):
        for server in _servers:
            report.sections.append((f"{server.__class__.__name__} log (end)", server.log_tail()))


@pytest.fixture
def stack(tmp_path, request):
    """An isolated product instance on the embedded broker and SQLite; with
    `@on_each_backend` (tests.helpers), once more on Apache Kafka and QuestDB."""
    env = {}
    if getattr(request, "param", EMBEDDED) == CLUSTER:
        cluster = request.getfixturevalue("kafka_cluster")
        cluster.reset()
        env = {"KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap}
    elif getattr(request, "param", EMBEDDED) != EMBEDDED:
        kafka, questdb = request.getfixturevalue("kafka_server"), request.getfixturevalue("questdb")
        kafka.reset()
        env = {"store_url": questdb.store_url, "QUESTDB_PG_URL": questdb.pg_url, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    with Stack(tmp_path, **env) as instance:
        yield instance


@pytest.fixture
def broker(stack: Stack):
    """A real embedded broker process with the product's topics created."""
    with stack.broker() as proc:
        yield proc


@pytest.fixture
def pipeline(stack, request):
    """`run all --no-dashboard` at 2 readings/s per sensor (one per live bucket: raw points), or
    at the rate a test asks for with `@pytest.mark.parametrize("pipeline", [RATE], indirect=True)`;
    with `[(RATE, "dashboard")]`, `run all` with its dashboard, a supervised child serving DASH_PORT
    in a process of its own, as a user runs it."""
    param = getattr(request, "param", 2)
    rate, dashboard = param if isinstance(param, tuple) else (param, None)
    stack.env["RATE"] = str(rate)  # the dashboard's too, as `run all --rate` gives it
    proc = stack.spawn("pipeline.run", "all", *([] if dashboard == "dashboard" else ["--no-dashboard"]), log_name="all")
    try:
        with stack.open_store() as store:
            store.ensure_tables()
            # The dashboard starting beside the writers (gunicorn, Dash, its Kafka clients) delays
            # them on a busy two-core machine: 32 s to the last table's first rows once.
            wait_for(lambda: all(store.count(s) > 0 for s in TOPICS.values()), 90 if dashboard == "dashboard" else 30, "rows in every table")
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
