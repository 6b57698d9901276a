"""Stopping is certain: a signal at any moment stops a command in order, and nothing outlives it.

Each test signals the real commands at random moments of their life (starting, steady, a broker
renewal, a writer restart). The moments come from one seeded generator: the seed is printed and
named in every failure, and `STOP_CHAOS_SEED=<seed> tests/run.sh -k test_stop` replays them.
Every process of a run carries a marker in its environment (children inherit it), so "nothing
outlives it" is checked over the whole family, the embedded broker and grandchildren included.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.schema import TOPICS
from pipeline.store import open_store
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import Stack, producer_totals, stop_process, wait_for

SEED = int(os.environ.get("STOP_CHAOS_SEED") or time.time_ns() % 2**32)
RATE = "200"
KILLED_GONE_S = 2.0  # after a SIGKILL of the command, its family is gone within this


@pytest.fixture
def rng():
    print(f"STOP_CHAOS_SEED={SEED}")
    return random.Random(SEED)


def marked(marker: str) -> list[psutil.Process]:
    """Live processes (zombies are dead) whose environment carries `marker`."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("STOP_CHAOS") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            continue
    return "; ".join(out)


def sent_per_topic(log: str, what: str) -> dict[str, int]:
    """What each producer says it sent, from its last line; a producer that never got as far as
    sending (stopped while it started) says nothing and sent nothing."""
    sent = dict.fromkeys(TOPICS, 0)
    for topic, (n, failed, left) in producer_totals(log).items():
        assert failed == left == 0, f"seed {SEED}, {what}: producer {topic}: {failed} failed, {left} undelivered:\n{log[-6000:]}"
        sent[topic] = n
    return sent


def counts(store_url: str) -> dict[str, int]:
    with open_store(store_url) as store:
        store.ensure_tables()
        return {name: store.count(spec) for name, spec in TOPICS.items()}


def rows_everywhere(stack: Stack, before: dict[str, int]):
    def more() -> bool:
        now = counts(stack.store_url)
        return all(now[t] > before[t] for t in TOPICS)

    return more


def stop_in_order(stack: Stack, proc: subprocess.Popen, marker: str, name: str, what: str) -> None:
    """SIGINT; the command exits 0 within its stop budget, leaving no process of its family."""
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(STOP_BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"seed {SEED}, {what}: still running {STOP_BUDGET_S:.0f}s after SIGINT:\n{stack.log(name)[-3000:]}")
    assert code == 0, f"seed {SEED}, {what}: exit code {code}:\n{stack.log(name)[-3000:]}"
    assert not marked(marker), f"seed {SEED}, {what}: left running: {describe(marked(marker))}"
    assert "Traceback" not in stack.log(name), f"seed {SEED}, {what}:\n{stack.log(name)[-3000:]}"


def killed_leaves_nothing(proc: subprocess.Popen, marker: str, what: str) -> None:
    """SIGKILL; within KILLED_GONE_S no process of the family is alive."""
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + KILLED_GONE_S
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not marked(marker), f"seed {SEED}, {what}: alive {KILLED_GONE_S}s after SIGKILL: {describe(marked(marker))}"


def wait_for_handlers(proc: subprocess.Popen, what: str) -> None:
    """Wait until the command has installed its stop handlers (SIGTERM among the signals it catches).

    Before that, the interpreter itself is starting: a Ctrl-C then ends it as it would end any
    Python program (KeyboardInterrupt), which no code of ours can change. The product installs
    them before its slow imports, as the first thing its code does."""
    def installed() -> bool:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) & 1 << (signal.SIGTERM - 1))

    wait_for(installed, 30, f"{what}: the stop handlers", interval=0.01, ignore=(OSError,))


def child(proc: subprocess.Popen, *words: str) -> psutil.Process:
    """The supervisor's child whose command line has all of `words`."""
    return next(p for p in psutil.Process(proc.pid).children() if all(w in p.cmdline() for w in words))


# The moments of `run all` a Ctrl-C may meet, and how many of each (30 in all).
MOMENTS = ["starting"] * 10 + ["steady"] * 8 + ["renewal"] * 3 + ["broker crash"] * 3 + ["writer restart"] * 6


def test_ctrl_c_at_random_moments_of_run_all_stops_everything_and_loses_nothing(tmp_path, rng):
    """SIGINT to `run all --rate 200` at 30 moments on one RUN_DIR: exit 0 within the stop budget,
    no process of the run left, sent = stored for every topic."""
    moments = MOMENTS[:]
    rng.shuffle(moments)
    with Stack(tmp_path) as stack:
        for i, moment in enumerate(moments):
            what, marker, name = f"Ctrl-C {i} ({moment})", f"{SEED}-int-{i}", f"all-{i}"
            before = counts(stack.store_url)
            env = {"STOP_CHAOS": marker, "BROKER_MAX_MB": "1"} if moment == "renewal" else {"STOP_CHAOS": marker}
            proc = stack.spawn("pipeline.run", "all", "--no-dashboard", "--rate", RATE, log_name=name, env=env)
            try:
                if moment == "starting":
                    wait_for_handlers(proc, what)
                    time.sleep(rng.uniform(0, 4))
                else:
                    wait_for(rows_everywhere(stack, before), 60, f"{what}: rows in every table", interval=0.2)
                    if moment == "renewal":  # a renewal at every 10 s check: BROKER_MAX_MB=1
                        stack.wait_log(name, "renewing the embedded broker", proc, 30)
                    elif moment == "broker crash":
                        next(p for p in psutil.Process(proc.pid).children() if "tansu" in p.name()).kill()
                    elif moment == "writer restart":
                        child(proc, "consumer", rng.choice(list(TOPICS))).kill()
                    time.sleep(rng.uniform(0, 2))
                stop_in_order(stack, proc, marker, name, what)
            finally:
                stop_process(proc, signal.SIGKILL)
            sent, stored = sent_per_topic(stack.log(name), what), counts(stack.store_url)
            got = {t: stored[t] - before[t] for t in TOPICS}
            print(f"{what}: sent {sent}, stored {got}")
            assert got == sent, f"seed {SEED}, {what}: sent {sent}, stored {got}:\n{stack.log(name)[-3000:]}"


def test_killed_supervisor_leaves_nothing_and_the_next_run_starts(tmp_path, rng):
    """SIGKILL to `run all` (dashboard included) at 10 random moments: 2 s later no process of
    that run is alive, and the next `run all` on the same RUN_DIR and ports starts and stores."""
    with Stack(tmp_path) as stack:
        for i in range(10):
            what, marker, name = f"SIGKILL {i}", f"{SEED}-kill-{i}", f"all-{i}"
            before = counts(stack.store_url)
            proc = stack.spawn("pipeline.run", "all", "--rate", RATE, log_name=name, env={"STOP_CHAOS": marker})
            try:
                if i > 0:  # the run after a kill starts and stores
                    wait_for(rows_everywhere(stack, before), 60, f"{what}: rows after the last kill", interval=0.2)
                time.sleep(rng.uniform(0, 6))
                killed_leaves_nothing(proc, marker, what)
            finally:
                stop_process(proc, signal.SIGKILL)
        marker, name = f"{SEED}-kill-last", "all-last"
        before = counts(stack.store_url)
        proc = stack.spawn("pipeline.run", "all", "--rate", RATE, log_name=name, env={"STOP_CHAOS": marker})
        try:
            wait_for(rows_everywhere(stack, before), 60, "rows after the last kill", interval=0.2)
            stop_in_order(stack, proc, marker, name, "the run after the kills")
        finally:
            stop_process(proc, signal.SIGKILL)


def test_dashboard_stops_on_ctrl_c_at_any_moment_and_dies_when_killed(stack, broker, rng):
    """`python -m dash_app`: SIGINT at 6 random moments exits 0 with its worker gone; SIGKILL
    at 3 leaves no worker behind, and the next one serves on the same port."""
    url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/"
    for i in range(9):
        what, marker, name = f"dash_app {'SIGINT' if i < 6 else 'SIGKILL'} {i}", f"{SEED}-dash-{i}", f"dash-{i}"
        proc = stack.spawn("dash_app", log_name=name, env={"STOP_CHAOS": marker})
        try:
            wait_for_handlers(proc, what)
            if i >= 6 or rng.random() < 0.5:  # half the Ctrl-Cs, and every kill, while it serves
                wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, f"{what}: the page", ignore=(OSError,))
            time.sleep(rng.uniform(0, 3))
            if i < 6:
                stop_in_order(stack, proc, marker, name, what)
            else:
                killed_leaves_nothing(proc, marker, what)
        finally:
            stop_process(proc, signal.SIGKILL)


@pytest.mark.parametrize("command", ["producer", "consumer"])
def test_a_lone_daemon_stops_on_ctrl_c_at_any_moment_and_dies_when_killed(stack, broker, rng, command):
    """`python -m pipeline.run producer|consumer temperature`: SIGINT at 6 random moments exits 0
    with nothing left (a writer's write process included); SIGKILL at 3 leaves nothing alive."""
    stack.env["RATE"] = RATE
    for i in range(9):
        what, marker, name = f"{command} {'SIGINT' if i < 6 else 'SIGKILL'} {i}", f"{SEED}-{command}-{i}", f"{command}-{i}"
        proc = stack.spawn("pipeline.run", command, "temperature", log_name=name, env={"STOP_CHAOS": marker})
        try:
            wait_for_handlers(proc, what)
            if rng.random() < 0.5:
                stack.wait_log(name, "sending" if command == "producer" else "store writes go to process", proc, 60)
            time.sleep(rng.uniform(0, 2))
            if i < 6:
                stop_in_order(stack, proc, marker, name, what)
                if command == "producer" and "sending" in stack.log(name):
                    assert [t[1:] for t in producer_totals(stack.log(name)).values()] == [(0, 0)], stack.log(name)[-2000:]
            else:
                killed_leaves_nothing(proc, marker, what)
        finally:
            stop_process(proc, signal.SIGKILL)
