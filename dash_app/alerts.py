"""The alerts panel: what fires now and the changes of the last 24 h, as the alerter published them.

Changes reach the page two ways, merged in the browser by each change's id (rule, sensor,
episode, state: dash_app.live.alert_row), so one seen both ways counts once:
- at each history load (the `cursor` store changes), the store's `alerts` table for the last
  HISTORY_S and the latest change of each alert still open from before it, joined to the ring's
  alert changes (the store is written a moment after the alerts
  topic; the ring holds what came since the process started, so the two leave no hole);
- then live, in the websocket frames (dash_app/live.py), merged into `alerts-live` by the frame
  handler of assets/live.js.
assets/alerts.js draws the panel from both and gives the cards the sensors that fire; the
frame handler draws a band on the charts over the time each alert fired (`live-config`'s
`alertCharts` says which charts a rule's band goes on).
"""
from __future__ import annotations

import time

from dash import ClientsideFunction, Input, Output, dcc, html
from dash_extensions import Purify

from dash_app.charts import CHARTS
from dash_app.live import alert_row
from dash_app.services import Services
from pipeline.alerts import ALERTS_TOPIC
from pipeline.config import Config
from pipeline.rules import Rule, Stale, Threshold, load
from pipeline.store import StoreUnavailable

HISTORY_S = 24 * 3600
HISTORY_KEPT = 2000  # newest changes a page load gets (a rule flapping all day would make thousands)


def layout() -> html.Section:
    return html.Section(id="alerts", className="alerts", children=[
        html.H2(["Alerts ", html.Span("", id="alerts-count", className="alerts-count")]),
        # HTML strings from assets/alerts.js (assets/markup.js says why not Dash components).
        Purify(id="alerts-now", className="alerts-now"),
        html.Details(className="alerts-history", children=[
            html.Summary("Last 24 h"),
            Purify(id="alerts-log", className="alerts-log"),
        ]),
        dcc.Store(id="alerts-history"),  # the store's changes (and the ring's) at the last history load
        dcc.Store(id="alerts-live"),  # changes from the websocket frames since
        dcc.Store(id="alerts-firing"),  # card id -> the rules firing for that sensor (assets/alerts.js)
    ])


def chart_ids(rule: Rule) -> list[str]:
    """The charts a rule's alerts are banded on: those showing its field (a threshold rule) or
    any of its topic's (a silent sensor); none for dead letters (no sensor to point at)."""
    if isinstance(rule, Threshold):
        return [c.id for c in CHARTS if c.topic == rule.topic and rule.field in c.fields]
    if isinstance(rule, Stale):
        return [c.id for c in CHARTS if c.topic == rule.topic]
    return []


def alert_charts(cfg: Config) -> dict[str, list[str]]:
    """Rule name -> the charts its bands go on (ALERT_RULES was checked when the config was read)."""
    return {rule.name: chart_ids(rule) for rule in load(cfg.alert_rules)}


def history(services: Services, now_ms: int) -> dict:
    """The changes of the last HISTORY_S, the store's and the ring's (newer than the store may be
    yet), and the latest change of each alert still open from before them: it belongs in "now"
    (the panel lists only the window's changes under "Last 24 h")."""
    start = now_ms - HISTORY_S * 1000
    changes, still_open = {}, []
    try:
        still_open = [alert_row(a) for a in services.store.latest_alerts(start) if a.state != "resolved"]
        for alert in services.store.alerts(start):
            row = alert_row(alert)
            changes[row["id"]] = row
        error = None
    except StoreUnavailable as exc:
        error = f"alert history unavailable: {exc}"
    rows, _ = services.ring.snapshot()
    for row in rows.get(ALERTS_TOPIC, []):
        changes[row["id"]] = row
    newest = [*still_open, *sorted(changes.values(), key=lambda row: row["ts"])[-HISTORY_KEPT:]]
    return {"changes": {row["id"]: row for row in newest}, "error": error}


def register(app, services: Services) -> None:
    @app.callback(Output("alerts-history", "data"), Input("cursor", "data"))
    def load(_cursor):
        # After the history load: the ring read here holds every change up to that load's cursor.
        return history(services, int(time.time() * 1000))

    app.clientside_callback(
        ClientsideFunction("alerts", "panel"),
        Output("alerts-now", "html"), Output("alerts-log", "html"), Output("alerts-count", "children"),
        Output("alerts-firing", "data"),
        Input("alerts-history", "data"), Input("alerts-live", "data"),
    )
