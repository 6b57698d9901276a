"""/pipeline's Replication panel: which broker leads each partition, who follows in sync, what moved.

Rendered from the poller's snapshot (`replication`, from dash_app/replication_watch.py) inside the
page's one view (pipeline_page.register): it has no callback of its own. A grid of partitions by
brokers shows each replica's role at a glance (leader, in-sync follower, follower out of sync),
the brokers' cards say which are up and how many partitions each leads, and the timeline lists
the leader moves and in-sync set changes of the last 15 minutes, newest first.
"""
from __future__ import annotations

from dash import html

OUTPUT = "pipeline-replication"
TIMELINE_SHOWN = 30
LESSON = (
    "Each partition is kept on several brokers, its replicas. One replica is the leader: producers write to it and "
    "consumers read from it. The others are followers that copy the leader; those that have everything it has are the "
    "in-sync replicas. A producer with acks=all is answered once every in-sync replica has the write, and "
    "min.insync.replicas says how few may be left before writes are refused (NOT_ENOUGH_REPLICAS). When a broker dies, "
    "the controller makes an in-sync follower the leader of each partition it led, and its partitions are "
    "under-replicated until it is back and has caught up."
)
EMBEDDED = (
    "The embedded broker is one node with no replicas: each partition has one copy, its leader, on that node, so "
    "nothing here can move and losing the node loses what it holds until `run all` replaces it. To watch replication, "
    "run a three-broker Apache Kafka cluster: `python -m pipeline.servers cluster` prints its KAFKA_BOOTSTRAP_SERVERS; "
    "run `python -m pipeline.run all` with it, then stop one of the brokers (README, Walkthrough). The compose cluster "
    "profile does the same in containers."
)
ROLES = {"leader": "leader", "follower": "in-sync follower", "out": "follower, out of sync", "none": ""}


def layout() -> html.Section:
    return html.Section(className="panel", id="panel-replication",
                        children=[html.H2("Replication"), html.P(LESSON, className="lesson"), html.Div(id=OUTPUT)])


def render(s: dict, clock) -> html.Div | str:
    """The panel's body for snapshot `s`; `clock` formats an epoch-ms time as the page does."""
    r = s.get("replication")
    if r is None:
        return ""
    brokers = [html.Div(className=f"broker-card {'up' if b['up'] else 'down'}", **{"data-broker": str(b["id"]), "data-state": "up" if b["up"] else "down"},
                        children=[html.B(f"broker {b['id']}"), html.Span(" up" if b["up"] else " down", className="state"),
                                  html.Br(), f"leads {b['leads']}" + (" · controller" if b["controller"] else ""),
                                  html.Br(), html.Span(b["address"] or "address not seen", className="address")])
               for b in r["brokers"]]
    summary = (f"Replication factor {r['factor']}; {r['under_replicated']} partition(s) under-replicated"
               + (f", {r['offline']} offline (no leader)" if r["offline"] else "") + ".")
    if s.get("embedded"):
        return html.Div([html.Div(brokers, className="broker-cards"), html.P(EMBEDDED, className="note", id="replication-embedded")])
    return html.Div([
        html.Div(brokers, className="broker-cards"),
        html.P(summary, id="replication-summary"),
        _grid(s["partitions"], [b["id"] for b in r["brokers"]], {b["id"] for b in r["brokers"] if not b["up"]}),
        html.P(["Cells: ", html.Span("leader", className="rep leader"), " ", html.Span("in-sync follower", className="rep follower"),
                " ", html.Span("follower, out of sync", className="rep out"), "; a down broker's column is greyed."], className="note"),
        html.H3("Timeline (newest first; the lag chart below marks the same moments)"),
        _timeline(r["events"], clock),
    ])


def role(p: dict, broker: int) -> str:
    if broker == p["leader"]:
        return "leader"
    if broker in p["isr"]:
        return "follower"
    return "out" if broker in p["replicas"] else "none"


def _grid(partitions: list[dict], brokers: list[int], down: set[int]) -> html.Table:
    rows = []
    for p in partitions:
        if p["topic"].endswith(".dlq") and not p["high"]:
            continue  # as the Partitions panel: empty dead-letter partitions are noise here
        tp = f"{p['topic']}/{p['partition']}"
        state = ("offline" if p["leader"] < 0 else "under-replicated" if len(p["isr"]) < len(p["replicas"]) else "in sync")
        rows.append(html.Tr([html.Td(tp)] + [
            html.Td(ROLES[role(p, b)], className=f"rep {role(p, b)}" + (" down" if b in down else ""),
                    **{"data-tp": tp, "data-broker": str(b), "data-role": role(p, b)}) for b in brokers
        ] + [html.Td(f"{state} ({len(p['isr'])} of {len(p['replicas'])} in sync)", className=f"rstate {state.replace(' ', '-')}")],
            className="replica-row", **{"data-tp": tp, "data-state": state}))
    header = ["partition"] + [f"broker {b}" + (" (down)" if b in down else "") for b in brokers] + ["state"]
    return html.Table(className="ptable replicas", id="replicas-table",
                      children=[html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)])


def _timeline(events: list, clock) -> html.Ul | html.P:
    if not events:
        return html.P("No leader or in-sync replica change since this dashboard started: stop a broker to see one.", className="note")
    return html.Ul([html.Li([html.Span(clock(t), className="when"), " ", text], className=f"repl-event {kind}",
                            **{"data-kind": kind, "data-t": str(t)})
                    for t, kind, text in reversed(events[-TIMELINE_SHOWN:])], className="timeline", id="replication-timeline")
