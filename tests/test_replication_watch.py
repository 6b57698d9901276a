"""What the Replication panel says from successive metadata answers (no broker needed): brokers
down and up, leaders moving, in-sync sets shrinking and growing back, in the lesson's words; and
that on the embedded broker it says one node, no replicas, and how to run the cluster."""
from __future__ import annotations

from dash_app import replication_panel
from dash_app.replication_watch import ReplicationWatch

UP = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}


def parts(leaders: dict[int, int], isr: list[int]) -> list[dict]:
    return [{"topic": "temperature", "partition": p, "leader": leader, "replicas": [1, 2, 3], "isr": isr, "high": 1}
            for p, leader in leaders.items()]


def test_a_broker_lost_and_back_is_told_in_the_lessons_words():
    watch = ReplicationWatch(history_s=900)
    first = watch.observe(1000, UP, parts({0: 1, 1: 2, 2: 3}, [1, 2, 3]), controller=1)
    assert first["events"] == [] and first["under_replicated"] == 0
    assert [(b["id"], b["up"], b["leads"]) for b in first["brokers"]] == [(1, True, 1), (2, True, 1), (3, True, 1)]

    down = watch.observe(2000, {1: UP[1], 3: UP[3]}, parts({0: 1, 1: 3, 2: 3}, [1, 3]), controller=1)
    kinds = [kind for _, kind, _ in down["events"]]
    assert kinds == ["broker-down", "leader", "isr-shrink"]
    texts = " | ".join(text for _, _, text in down["events"])
    assert "leader moved from broker 2 to broker 3 for temperature/1" in texts
    assert "broker 2 dropped out of the in-sync replicas of 3 partitions" in texts and "3 under-replicated" in texts
    assert [b["up"] for b in down["brokers"]] == [True, False, True] and down["under_replicated"] == 3

    back = watch.observe(3000, UP, parts({0: 1, 1: 3, 2: 3}, [1, 2, 3]), controller=1)
    new = back["events"][len(down["events"]):]
    assert [kind for _, kind, _ in new] == ["isr-grow", "broker-up"]
    assert "every partition fully in sync" in new[0][2] and back["under_replicated"] == 0


def test_a_watch_carrying_on_from_a_dead_pollers_view_still_tells_what_changed():
    """The poller runs in a process of its own and may die as a broker dies: the next one carries
    on from the last view, so the leader that moved meanwhile is still an event."""
    rows = parts({0: 1, 1: 2}, [1, 2, 3])
    view = ReplicationWatch(history_s=900).observe(1000, UP, rows, controller=1)
    view["events"] = [(500, "broker-up", "broker 3 joined the cluster")]
    watch = ReplicationWatch(history_s=900)
    watch.restore(view, rows)
    after = watch.observe(2000, {1: UP[1], 3: UP[3]}, parts({0: 1, 1: 3}, [1, 3]), controller=1)
    assert [kind for _, kind, _ in after["events"]] == ["broker-up", "broker-down", "leader", "isr-shrink"]
    assert [b["up"] for b in after["brokers"]] == [True, False, True]


def test_no_leader_left_is_offline():
    watch = ReplicationWatch(history_s=900)
    watch.observe(1000, UP, parts({0: 2}, [2]), controller=1)
    gone = watch.observe(2000, {1: UP[1], 3: UP[3]}, parts({0: -1}, [2]), controller=1)
    assert gone["offline"] == 1 and any("offline" in text for _, kind, text in gone["events"] if kind == "leader")


def test_the_grid_marks_each_replicas_role_and_the_embedded_broker_says_one_node():
    watch = ReplicationWatch(history_s=900)
    partitions = parts({0: 1}, [1, 3])
    snap = {"embedded": False, "partitions": partitions, "replication": watch.observe(1000, UP, partitions, controller=1)}
    roles = [replication_panel.role(partitions[0], b) for b in (1, 2, 3)]
    assert roles == ["leader", "out", "follower"]
    assert "under-replicated" in str(replication_panel.render(snap, str))
    embedded = [{"topic": "temperature", "partition": 0, "leader": 111, "replicas": [111], "isr": [111], "high": 5}]
    text = str(replication_panel.render({"embedded": True, "partitions": embedded,
                                         "replication": ReplicationWatch(900).observe(1000, {111: "127.0.0.1:19092"}, embedded, 111)}, str))
    assert "one node with no replicas" in text and "python -m pipeline.servers cluster" in text
