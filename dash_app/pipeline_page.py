"""/pipeline: Kafka's lessons running live, from the process's one PipelinePoller.

Each open page fetches, once a second, the panels and the lag chart built from the poller's
latest snapshot; they are built and serialized once per snapshot (cached by version) and the
same bytes go to every viewer, so ten viewers cost ten small requests, not ten polls of Kafka. Every panel starts with the one or
two sentences of the lesson it shows.
"""
from __future__ import annotations

import threading
import time

import orjson
from dash import Input, Output, dcc, html
from flask import Response

from dash_app import replication_panel
from dash_app.pipeline_poller import DASHBOARD_PREFIX, HISTORY_S, WRITER_PREFIX
from dash_app.services import Services
from pipeline.alerter import GROUP as ALERTER_GROUP

PATH = "/pipeline"
VIEW_PATH = "/_pipeline/view"  # relative to the page in the browser: works under a path prefix too
TICK_MS = 1000
OUTPUTS = ("pipeline-updated", "pipeline-broker", replication_panel.OUTPUT, "pipeline-topics", "pipeline-partitions", "pipeline-groups", "pipeline-dead")

LESSONS = {
    "broker": "Brokers keep the partitions. One of them, the controller, decides which broker leads each "
              "partition; the others follow and copy it, so losing a broker moves leadership instead of losing data.",
    "topics": "A topic is a named stream of messages: one per kind of sensor, each with a .dlq twin for the "
              "messages its store writers refused. Messages in per second is how fast the end offsets grow. The "
              "alerter publishes each change of an alert's state to `alerts`, keyed by rule and sensor.",
    "partitions": "A topic is split into partitions, each an ordered log with its own offsets. A producer hashes "
                  "each message's key (the room or device) to choose its partition, so one sensor's readings always "
                  "land in the same partition, in order. The leader takes the writes; the in-sync replicas have all of them.",
    "groups": "The store writers of a topic share one consumer group: Kafka gives each partition to exactly one "
              "member, so they split the work like a queue. Each dashboard process has a group of its own and reads "
              "every partition: publish/subscribe, and so does the alerter, in its group `alerter`. When a member "
              "joins or leaves, the group rebalances and deals "
              "the partitions again; lag is what a group still has to commit.",
    "dead": "A message that fails validation is neither retried forever nor dropped: the writer copies it "
            "unchanged to <topic>.dlq, with the reason in its error header and its origin (topic/partition/offset) "
            "in source, commits, and carries on. The alerter does the same with each change of an alert its "
            "webhook failed to deliver: to alerts.dlq, with the server's answer.",
}
LAG_FROM = {  # what a group's lag is counted from (pipeline_poller)
    "committed": " (committed→end per partition)",
    "position": " (this dashboard's read position→end per partition)",
}
EMBEDDED = {
    "broker": "This is the embedded broker (Tansu, started by `python -m pipeline.run all`): one broker, memory "
              "only, no replication, so every partition's leader, replicas and in-sync replicas are that one node. "
              "Nothing is deleted; when it grows too big `run all` renews it on another port, and offsets start "
              "again from 0. On Apache Kafka (the compose cluster profile) this panel shows three brokers.",
    "partitions": "High watermark: the true end of the partition. The embedded broker answers a latest-offset "
                  "query with the start of the partition's last record batch + 1 (\"reported\"), so the page reads "
                  "that batch to find the end. Keys: those seen in the last 5 minutes.",
    "groups": "The embedded broker lists a group's members by member id only (librdkafka names them "
              "<client id>-<uuid>): it reports neither their host nor their partitions. The partitions shown "
              "are computed with the range assignor every consumer of this product uses; committed offsets "
              "and lag are the broker's own figures. It also lists only groups that have committed offsets: "
              "a dashboard's group commits none, so this page shows its own dashboard's group (it knows the id) "
              "but not those of other dashboard processes. Apache Kafka lists and describes every group in full.",
}


def layout(**_kwargs) -> html.Div:
    return html.Div(
        className="page pipeline",
        children=[
            html.Header(className="header", children=[html.H1("Pipeline"), html.Span(id="pipeline-updated", className="updated")]),
            _panel("Broker", "broker", html.Div(id="pipeline-broker")),
            replication_panel.layout(),
            _panel("Topics", "topics", html.Div(id="pipeline-topics")),
            _panel("Partitions", "partitions", html.Div(id="pipeline-partitions")),
            _panel("Consumer groups", "groups", html.Div(id="pipeline-groups"),
                   dcc.Graph(id="pipeline-lag", config={"displayModeBar": False}, style={"height": "260px"})),
            _panel("Dead letters", "dead", html.Div(id="pipeline-dead")),
            dcc.Interval(id="pipeline-tick", interval=TICK_MS),
        ],
    )


def _panel(title: str, key: str, *body) -> html.Section:
    return html.Section(className="panel", id=f"panel-{key}", children=[html.H2(title), html.P(LESSONS[key], className="lesson"), *body])


def register(app, services: Services) -> None:
    """VIEW_PATH serves the panels as JSON, built and serialized once per snapshot; each page's
    tick fetches it in a clientside callback. (A server callback would have Dash serialize the
    component tree again for every viewer: ~25 ms each, measured, where these bytes cost ~10 ms
    once per second however many pages are open.)"""
    cache = {"version": -1, "body": b""}
    lock = threading.Lock()

    @app.server.route(VIEW_PATH)
    def pipeline_view():
        if services.pipeline is None:
            return Response(_dumps(("pipeline poller not running", *[""] * (len(OUTPUTS) - 1), _figure({}))),
                            mimetype="application/json")
        version, snap = services.pipeline.latest()
        with lock:
            if cache["version"] != version:
                cache["body"], cache["version"] = _dumps(_render(snap)), version
            body = cache["body"]
        return Response(body, mimetype="application/json", headers={"Cache-Control": "no-store"})

    app.clientside_callback(
        """async function(_n) {
            const none = window.dash_clientside.no_update;
            try {
                const answer = await fetch("VIEW", {cache: "no-store"});
                if (answer.ok) { return await answer.json(); }
            } catch (e) { /* the dashboard is restarting: say so below */ }
            return ["dashboard unreachable: retrying", ...Array(COUNT).fill(none)];
        }""".replace("VIEW", VIEW_PATH.lstrip("/")).replace("COUNT", str(len(OUTPUTS))),
        *[Output(o, "children") for o in OUTPUTS], Output("pipeline-lag", "figure"), Input("pipeline-tick", "n_intervals"),
    )


def _dumps(outputs) -> bytes:
    return orjson.dumps(outputs, default=lambda component: component.to_plotly_json())


def _render(s: dict) -> tuple:
    if s.get("ok") is None:
        return ("waiting for the first poll", *[""] * (len(OUTPUTS) - 1), _figure(s))
    embedded = s.get("embedded")
    if s["ok"]:
        updated = f"updated {_clock(s['t'])} · poll {s.get('poll_ms', 0)} ms · poller CPU {s.get('cpu_ms', 0)} ms"
    else:
        since, what = s.get("stale_since"), "poller restarting" if s.get("poller_down") else "broker unreachable"
        updated = f"{what}: figures below are from {_clock(since)}" if since else what
    return (
        html.Span(updated, className="" if s["ok"] else "notice"),
        _broker(s, embedded),
        replication_panel.render(s, _clock),
        _topics(s) if s.get("topics") is not None else "",
        _partitions(s, embedded) if s.get("partitions") is not None else "",
        _groups(s, embedded) if s.get("groups") is not None else "",
        _dead(s),
        _figure(s),
    )


def _clock(t_ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t_ms / 1000)) if t_ms else "–"


def _table(header: list[str], rows: list, **attrs) -> html.Table:
    return html.Table(className="ptable", children=[html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)], **attrs)


def _broker(s: dict, embedded: bool) -> html.Div:
    if s["ok"]:
        state = html.Span("reachable", className="badge badge-live", id="broker-state")
    elif s.get("poller_down"):
        state = html.Span("not polled", className="badge", id="broker-state")
    else:
        state = html.Span("unreachable", className="badge badge-down", id="broker-state")
    facts = [
        html.Li(["State: ", state, f" at {s.get('address', '')}" + ("" if s["ok"] else f": {s.get('error', '')}")]),
        html.Li(f"Brokers: {len(s.get('brokers') or [])} ({', '.join(s.get('brokers') or []) or '–'}); controller: node {s.get('controller', '–')}"),
        html.Li(f"Cluster id: {s.get('cluster_id', '–')}"),
    ]
    if embedded and s.get("generation") is not None:
        facts.append(html.Li(f"Embedded broker generation {s['generation']} (renewals since `run all` started)"))
    return html.Div([html.Ul(facts), html.P(EMBEDDED["broker"], className="note") if embedded else None])


def _topics(s: dict) -> html.Table:
    rows = []
    for t in s["topics"]:
        rate = "–" if t["rate"] is None else f"{t['rate']:.1f}"
        rows.append(html.Tr([html.Td(t["name"]), html.Td(t["partitions"]), html.Td(t["replication"]), html.Td(rate),
                             html.Td(f"{t['total']:,}")], className="dlq" if t["dlq"] else None, **{"data-topic": t["name"]}))
    return _table(["topic", "partitions", "replication factor", "messages in / s", "messages in total (dead letters for .dlq)"], rows,
                  id="topics-table")


def _partitions(s: dict, embedded: bool) -> html.Div:
    rows = []
    for p in s["partitions"]:
        if p["topic"].endswith(".dlq") and not p["high"]:
            continue
        high = f"{p['high']:,}" + (f" (reported {p['reported_high']:,})" if embedded and p["reported_high"] != p["high"] else "")
        rows.append(html.Tr([
            html.Td(p["topic"]), html.Td(p["partition"]), html.Td(p["leader"]), html.Td(", ".join(map(str, p["replicas"]))),
            html.Td(", ".join(map(str, p["isr"]))), html.Td(f"{p['low']:,}"), html.Td(high),
            html.Td(", ".join(p["keys"]) or ("–" if p["high"] else "(empty: no key hashes here)")),
        ]))
    empty_dlq = sum(1 for p in s["partitions"] if p["topic"].endswith(".dlq") and not p["high"])
    return html.Div([
        _table(["topic", "partition", "leader", "replicas", "in-sync replicas", "low watermark", "high watermark", "keys"], rows,
               id="partitions-table"),
        html.P(f"{empty_dlq} empty .dlq partitions not listed.", className="note") if empty_dlq else None,
        html.P(EMBEDDED["partitions"], className="note") if embedded else None,
    ])


def _groups(s: dict, embedded: bool) -> html.Div:
    shown, hidden = [], 0
    for g in s["groups"]:
        if not g["members"] and g["id"].startswith(DASHBOARD_PREFIX):
            hidden += 1  # the group of a dashboard process that has stopped
            continue
        shown.append(g)
    blocks = []
    for g in shown:
        kind = ("store writers: a queue" if g["id"].startswith(WRITER_PREFIX)
                else "a dashboard process: publish/subscribe" if g["id"].startswith(DASHBOARD_PREFIX)
                else "the alerter: publish/subscribe, its alerts go to the alerts topic" if g["id"] == ALERTER_GROUP else "")
        members = [html.Tr([
            html.Td(m["client_id"]), html.Td(m["member_id"], className="mono"), html.Td(m["host"] or "not reported"),
            html.Td(_ranges(m["partitions"]) + (" (computed)" if g["source"] == "computed" and m["partitions"] else "")),
        ], className="member", **{"data-group": g["id"], "data-member": m["member_id"],
                                  "data-partitions": " ".join(f"{t}/{p}" for t, p in m["partitions"])})
            for m in g["members"]]
        if g["total_lag"] is None:
            lag = "commits no offsets (its position lives in its own process), so Kafka knows no lag for it"
        else:
            lag = f"lag {g['total_lag']:,}: " + ", ".join(
                f"{o['topic']}/{o['partition']} {_count(o['committed'])}→{o['end']:,}" for o in g["offsets"]) + LAG_FROM[g["lag_from"]]
        blocks.append(html.Div(className="group", **{"data-group": g["id"]}, children=[
            html.H3([g["id"], html.Span(f" {g['state']} · {len(g['members'])} member(s)" + (f" · {kind}" if kind else ""), className="sub")]),
            _table(["client id", "member id", "host", "partitions"], members) if members else html.P("no members", className="note"),
            html.P(lag, className="lag"),
        ]))
    if hidden:
        blocks.append(html.P(f"{hidden} empty dashboard group(s) of stopped dashboard processes not shown.", className="note"))
    if embedded:
        blocks.append(html.P(EMBEDDED["groups"], className="note"))
    return html.Div(blocks)


def _count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _ranges(parts: list) -> str:
    by_topic: dict[str, list[int]] = {}
    for t, p in parts:
        by_topic.setdefault(t, []).append(p)
    return "; ".join(f"{t} {', '.join(map(str, ps))}" for t, ps in by_topic.items()) or "none"


def _dead(s: dict) -> html.Div:
    dead = s.get("dead") or {}
    if not any(dead.values()):
        return html.P("No dead letters since this dashboard started (or in the current broker).", className="note")
    rows = []
    for topic, letters in sorted(dead.items()):
        for d in reversed(letters):
            rows.append(html.Tr([html.Td(_clock(d["time"])), html.Td(topic), html.Td(d["error"], className="error"),
                                 html.Td(d["source"]), html.Td(d["key"]), html.Td(d["value"], className="mono")],
                                className="dead-letter", **{"data-topic": topic}))
    return _table(["time", "topic", "error (reason)", "source", "key", "message"], rows, id="dead-table")


def _figure(s: dict) -> dict:
    now = s.get("t") or int(time.time() * 1000)
    data = [{"type": "scatter", "mode": "lines", "name": g, "x": [t for t, _ in h], "y": [v for _, v in h]}
            for g, h in sorted((s.get("lag_history") or {}).items())]
    events = s.get("events") or []
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": t, "x1": t, "y0": 0, "y1": 1,
               "line": {"dash": "dot", "width": 1, "color": "#d9480f"}} for t, _, _ in events]
    if events:
        data.append({"type": "scatter", "mode": "markers", "name": "rebalance", "x": [t for t, _, _ in events],
                     "y": [0] * len(events), "text": [text for _, _, text in events], "hoverinfo": "text+x",
                     "marker": {"symbol": "triangle-up", "size": 10, "color": "#d9480f"}})
    moves = (s.get("replication") or {}).get("events") or []
    shapes += [{"type": "line", "xref": "x", "yref": "paper", "x0": t, "x1": t, "y0": 0, "y1": 1,
                "line": {"dash": "dot", "width": 1, "color": "#5f3dc4"}} for t, _, _ in moves]
    if moves:
        data.append({"type": "scatter", "mode": "markers", "name": "replication", "x": [t for t, _, _ in moves],
                     "y": [0] * len(moves), "text": [text for _, _, text in moves], "hoverinfo": "text+x",
                     "marker": {"symbol": "diamond", "size": 10, "color": "#5f3dc4"}})
    return {
        "data": data,
        "layout": {
            "title": {"text": "Lag per group, last 15 minutes (markers: rebalances and broker renewals; diamonds: leaders "
                              "moving and in-sync replicas changing)", "font": {"size": 13}},
            "xaxis": {"type": "date", "range": [now - HISTORY_S * 1000, now]},
            "yaxis": {"title": {"text": "messages"}, "rangemode": "tozero"},
            "shapes": shapes, "margin": {"l": 50, "r": 10, "t": 30, "b": 30}, "uirevision": "lag",
            "legend": {"orientation": "h"},
        },
    }
