"""Replication, proven: `run all --rate 50` (550 readings/s) on a three-node Apache Kafka cluster
(topics with replication factor 3 and min.insync.replicas 2, producers with acks=all) loses a
broker, and nothing is lost.

Three ways to lose one: the broker leading the most partitions SIGKILLed (with `run all`'s own
dashboard process serving the live page and /pipeline to the browser), a broker shut down cleanly
(its leaderships handed over first), and two brokers down at once. Each checks, from the store, that every sensor has every reading
its producer sent (sent = stored) with no hole over 2 s, and that the writers' groups carry on.
The cluster is the session's (conftest `kafka_cluster`); each test leaves all three nodes up.

No Kafka admin request leaves this process while a broker is down: librdkafka (2.16.0) sometimes
aborts a process whose admin requests are out when a broker dies (`rd_kafka_enq_once_del_source_return:
Assertion 'eonce->refcnt > 0' failed`, librdkafka #4605, #3663), and an abort here would end the
whole test run. The page is read from the dashboard process (whose poller runs in a process of its
own for the same reason), the cluster's metadata from a short-lived process of its own (`partitions`).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient

from dash_app import replication_panel
from dash_app.pipeline_page import OUTPUTS, VIEW_PATH
from pipeline.schema import TOPICS
from pipeline.simulate import device_names, room_names
from pipeline.store import open_store
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import CLUSTER, producer_totals, stop_process, wait_for

RATE = 50  # per sensor: 11 sensors, 550 readings/s
HOLE_MS = 2000
# Bounds that hold on a busy two-core machine, above the targets (3 s, 5 s, 30 s), which
# this setup does not meet (docs/performance.md, Replication): a killed broker is fenced after
# broker.session.timeout.ms (3 s), after a new controller is elected if it was the controller,
# and the groups whose coordinator it was rejoin; a JVM restarting there took 20-50 s to answer.
NEWEST_AGE_MS = 15_000
LEADER_SHOWN_S = 15
ISR_WHOLE_S = 90
pytestmark = pytest.mark.parametrize("stack", [CLUSTER], indirect=True)
# The kinds of event the timeline shows for a broker lost and back.
DOWN_KINDS, UP_KINDS = {"leader", "isr-shrink", "broker-down"}, {"broker-up", "isr-grow"}

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
    wait_for(lambda: not under_replicated(kafka_cluster), 60, "every partition in sync again", interval=0.5, ignore=(OSError,))


def admin(cluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})


# The reading topics' partitions as the cluster's metadata has them: {"topic/p": [leader, replicas, isr]}.
PARTITIONS = """
import json, sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
print(json.dumps({f"{t}/{p}": [pm.leader, pm.replicas, pm.isrs] for t in sys.argv[2:] for p, pm in md.topics[t].partitions.items()}))
"""


def partitions(cluster) -> dict[str, list]:
    """The reading topics' partitions ({"topic/p": [leader, replicas, isr]}), asked in a process of
    its own: a broker may be down (see the module's docstring). Raises OSError if that process
    failed or aborted (wait_for's `ignore` takes it as not yet)."""
    try:
        done = subprocess.run([sys.executable, "-c", PARTITIONS, cluster.bootstrap, *TOPICS],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"metadata process did not answer: {exc}") from exc
    if done.returncode != 0:
        raise OSError(f"metadata process exited with {done.returncode}: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def under_replicated(cluster) -> list[str]:
    return [tp for tp, (_, replicas, isr) in partitions(cluster).items() if len(isr) < len(replicas)]


def stored(store_url: str) -> int:
    with open_store(store_url) as store:
        return sum(store.count(spec) for spec in TOPICS.values())


def groups_carry_on(cluster, dashboard: bool) -> bool:
    """Each topic's store-writer group (and, with `dashboard`, the dashboard's own group) is
    Stable, its one member owning partitions. Asked in this process: call it with every broker up.
    A dashboard process that died (restarted by `run all`) leaves its group behind, empty once its
    session has expired: the one dashboard group with members is the running dashboard's."""
    client = admin(cluster)
    ids = [g.group_id for g in client.list_consumer_groups(request_timeout=5).result().valid]
    writers = [f"store-writer.{t}" for t in TOPICS]
    found = {f: future.result() for f, future in client.describe_consumer_groups(
        writers + ([g for g in ids if g.startswith("dashboard-")] if dashboard else []), request_timeout=5).items()}
    wanted = [found[w] for w in writers] + [g for i, g in found.items() if i.startswith("dashboard-") and g.state.name != "EMPTY"]
    if dashboard and len(wanted) != len(TOPICS) + 1:
        return False
    return all(g.state.name == "STABLE" and len(g.members) == 1 and g.members[0].assignment.topic_partitions for g in wanted)


def stop_pipeline(stack) -> str:
    """Ctrl-C to `run all`; its log. (On Kafka what its writers had not stored stays in Kafka.)"""
    (proc,) = [p for p in stack.procs if p.args[3] == "all"]
    assert stop_process(proc, signal.SIGINT, STOP_BUDGET_S) == 0, stack.log("all")[-3000:]
    log = stack.log("all")
    assert "Traceback" not in log, log[-3000:]
    return log


def check_nothing_lost(stack, cfg) -> dict:
    """sent = stored for every sensor, and its longest hole; fails naming the sensor otherwise."""
    log = stop_pipeline(stack)
    sent = {t: n for t, (n, _failed, left) in producer_totals(log).items() if left == 0}
    assert set(sent) == set(TOPICS), f"not every producer stopped with nothing undelivered:\n{log[-3000:]}"
    stack.store_what_kafka_kept(sum(sent.values()))
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


def dashboard_restarts(stack) -> int:
    """How often the dashboard process died during `run all` (the supervisor restarts it), or its
    gunicorn worker (gunicorn starts another), so far."""
    log = stack.log("all")
    return log.count("dashboard exited with code") + len(re.findall(r"Worker \(pid:\d+\) (?:was sent SIG(?!TERM)|exited with code)", log))


def poller_restarts(stack) -> int:
    """How often the dashboard's /pipeline poller process died (librdkafka's abort) and was replaced."""
    return stack.log("all").count("pipeline poller process ended with code")


def _props(component):
    """The props of every component in a Dash component tree as JSON, depth first."""
    if isinstance(component, list):
        for child in component:
            yield from _props(child)
    elif isinstance(component, dict) and "props" in component:
        yield component["props"]
        yield from _props(component["props"].get("children"))


class PipelinePage:
    """/pipeline's Replication panel as every open page renders it: the JSON the page's tick
    fetches from the dashboard process (VIEW_PATH), read as its grid (`data-role` per partition and
    broker), broker cards (`data-state`) and timeline (`data-kind`). The browser itself is checked
    at the end: at 550 readings/s on two busy cores a script in the page can wait seconds for the
    live charts, which would time the browser, not the page."""

    def __init__(self, base_url: str):
        self.url = base_url + VIEW_PATH

    def now(self) -> dict:
        """{"roles": {"topic/p": {broker: role}} for the reading topics, "brokers": {id: "up"|"down"},
        "kinds": the timeline's}; OSError while the dashboard is down or restarting."""
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            panel = json.loads(answer.read())[OUTPUTS.index(replication_panel.OUTPUT)]
        roles: dict[str, dict[int, str]] = defaultdict(dict)
        brokers, kinds = {}, set()
        for p in _props(panel):
            if "data-role" in p and p["data-tp"].rsplit("/", 1)[0] in TOPICS:
                roles[p["data-tp"]][int(p["data-broker"])] = p["data-role"]
            elif "broker-card" in (p.get("className") or "").split():  # a card, not the "broker-cards" row
                brokers[int(p["data-broker"])] = p["data-state"]
            elif "data-kind" in p:
                kinds.add(p["data-kind"])
        return {"roles": dict(roles), "brokers": brokers, "kinds": kinds}

    def leads(self, broker: int) -> int | None:
        """How many reading partitions the page shows `broker` leading (None: no grid yet)."""
        roles = self.now()["roles"]
        return sum(r.get(broker) == "leader" for r in roles.values()) if roles else None

    def in_sync(self) -> bool | None:
        """Every reading partition with a leader and two in-sync followers (None: no grid yet)."""
        roles = self.now()["roles"]
        return all(sorted(r.values()) == ["follower", "follower", "leader"] for r in roles.values()) if roles else None


@pytest.mark.parametrize("pipeline", [(RATE, "dashboard")], indirect=True)
def test_leader_killed_under_load_loses_nothing_and_the_page_shows_the_failover(cluster, pipeline, dash_duo):
    duo, url = dash_duo, f"http://127.0.0.1:{pipeline.env['DASH_PORT']}"
    page = PipelinePage(url)
    duo.driver.set_script_timeout(120)
    # `run all` starts the dashboard beside the producers; on a busy machine it may still be starting.
    wait_for(lambda: urllib.request.urlopen(url + "/", timeout=5).status == 200, 90, "the dashboard serving", ignore=(OSError,))
    duo.driver.get(url + "/")
    duo.wait_for_text_to_equal("#status", "live", timeout=60)
    wait_for(lambda: duo.driver.execute_script("return document.querySelectorAll('.js-plotly-plot').length") > 0, 20, "charts")
    duo.driver.execute_script(AGE_RECORDER)

    wait_for(page.in_sync, 60, "the page showing every partition in sync", ignore=(OSError,))
    leaders = [b for r in page.now()["roles"].values() for b, role in r.items() if role == "leader"]
    victim = max(sorted(set(leaders)), key=leaders.count)  # the busiest leader, as the page shows it
    before = stored(pipeline.store_url)
    killed = time.monotonic()
    cluster.kill(victim)
    wait_for(lambda: page.leads(victim) == 0, 30, f"the page showing broker {victim}'s leaderships moved", interval=0.25, ignore=(OSError,))
    leader_shown_s = time.monotonic() - killed
    wait_for(lambda: page.in_sync() is False, 10, "under-replicated partitions on the page", interval=0.25, ignore=(OSError,))
    wait_for(lambda: page.now()["brokers"].get(victim) == "down" and DOWN_KINDS <= page.now()["kinds"],
             10, f"broker {victim} down and {DOWN_KINDS} on the page", interval=0.25, ignore=(OSError,))
    wait_for(lambda: stored(pipeline.store_url) > before + 5 * RATE * 11, 30, "readings stored with the broker down")

    restarted = time.monotonic()
    cluster.restart(victim)
    wait_for(page.in_sync, ISR_WHOLE_S, "every partition in sync again on the page", interval=0.25, ignore=(OSError,))
    isr_whole_s = time.monotonic() - restarted
    # The timeline keeps the whole story, even across a poller process that died meanwhile.
    assert DOWN_KINDS | UP_KINDS <= page.now()["kinds"], page.now()["kinds"]
    wait_for(lambda: groups_carry_on(cluster, dashboard=True), 30, "the writers' and the dashboard's groups stable", ignore=(Exception,))

    # /pipeline as a person sees it: the grid, the brokers, the timeline, the console.
    ages = duo.driver.execute_script("return window.ages")
    duo.driver.get(url + "/pipeline")
    duo.wait_for_element('#replicas-table td[data-role="leader"]', timeout=30)
    shown = duo.driver.execute_script(
        "return Array.from(document.querySelectorAll('#replication-timeline .repl-event'), e => e.dataset.kind)")
    assert {"leader", "isr-shrink", "isr-grow"} <= set(shown), shown
    assert duo.driver.execute_script("return document.querySelectorAll('.broker-card[data-state=\"up\"]').length") == 3
    assert duo.get_logs() == [], "browser console errors"
    assert dashboard_restarts(pipeline) == 0, pipeline.log("all")[-3000:]

    result = check_nothing_lost(pipeline, pipeline.config())
    print(f"broker {victim} killed: leader change on the page after {leader_shown_s:.1f} s, in-sync sets whole {isr_whole_s:.1f} s "
          f"after the restart; page's newest point at most {ages['page']} ms old (each series' at most {ages['series']} ms, "
          f"{ages['samples']} samples); the /pipeline poller's process replaced {poller_restarts(pipeline)} time(s); {result}")
    # The recorder runs every 100 ms; a renderer starved by a busy machine runs it far less (50
    # times in two minutes once here), but it must have watched the whole failover.
    assert ages["samples"] >= 20, ages
    assert ages["page"] <= NEWEST_AGE_MS, ages
    assert leader_shown_s <= LEADER_SHOWN_S
    assert isr_whole_s <= ISR_WHOLE_S


@pytest.mark.parametrize("pipeline", [RATE], indirect=True)
def test_broker_shut_down_cleanly_hands_over_its_leaders_and_loses_nothing(cluster, pipeline):
    """A clean shutdown (SIGTERM) is a controlled one: the broker asks the controller to move its
    leaderships to in-sync followers before it exits, so no partition waits out a session timeout."""
    victim = cluster.busiest_leader(TOPICS)
    before = stored(pipeline.store_url)
    began = time.monotonic()
    cluster.stop(victim)
    shutdown_s = time.monotonic() - began
    parts = wait_for(lambda: partitions(cluster), 60, "the cluster's metadata", ignore=(OSError,))
    still = [tp for tp, (leader, _, _) in parts.items() if leader == victim]
    assert not still, f"broker {victim} exited still leading {still}"
    wait_for(lambda: stored(pipeline.store_url) > before + 5 * RATE * 11, 30, "readings stored with the broker stopped")
    restarted = time.monotonic()
    cluster.restart(victim)
    wait_for(lambda: not under_replicated(cluster), 60, "every partition in sync again", interval=0.5, ignore=(OSError,))
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


@pytest.mark.parametrize("pipeline", [RATE], indirect=True)
def test_two_brokers_down_stop_writes_until_one_returns_and_nothing_is_lost(cluster, pipeline):
    """With two of three brokers down no write can reach two in-sync replicas (min.insync.replicas
    2): producers keep their readings queued and retry. Each node here is a KRaft controller too,
    so the one left also has no quorum: the controller cannot shrink in-sync sets or move leaders,
    and writes wait for the dead followers instead of being refused with NOT_ENOUGH_REPLICAS. Once
    one broker is back, the quorum and two in-sync replicas are, and the queues are delivered."""
    first = cluster.busiest_leader(TOPICS)
    second = next(n for n in cluster.nodes if n != first)
    cluster.kill(first)
    wait_for(lambda: all(first not in isr for _, _, isr in partitions(cluster).values()), 30,
             f"broker {first} out of every in-sync set (its leaderships moved)", interval=0.5, ignore=(OSError,))
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
    wait_for(lambda: not under_replicated(cluster), 60, "every partition in sync again", interval=0.5, ignore=(OSError,))
    wait_for(lambda: groups_carry_on(cluster, dashboard=False), 30, "the writers' groups stable", ignore=(Exception,))
    result = check_nothing_lost(pipeline, pipeline.config())
    print(f"brokers {first} and {second} down: nothing stored from {stalled_s - 3:.1f} s after the second went down; "
          f"writes resumed {resumed_s:.1f} s after it was restarted; {result}")
