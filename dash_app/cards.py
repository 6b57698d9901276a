"""A card per sensor: its latest value and how old it is, updated in the browser."""
from __future__ import annotations

from dash import ALL, ClientsideFunction, Input, Output, State, html

# How each topic's card shows a reading: (field, label, unit, scale, decimals).
CARD_FIELDS = {
    "temperature": [("value", "", " °C", 1, 1)],
    "humidity": [("value", "", " %", 1, 0)],
    "systemusage": [("cpu_percent", "CPU ", " %", 1, 0), ("memory_used", "mem ", " GiB", 2**-30, 1)],
}
TITLES = {"temperature": "temperature", "humidity": "humidity", "systemusage": "system"}
STALE_INTERVALS = 5  # a sensor silent for this many of its reporting intervals is stale...
STALE_MIN_MS = 10_000  # ...and for at least this long (frames and the 1 s card tick have their own delays)


def stale_after_ms(interval_ms: float) -> float:
    """How long a sensor reporting every `interval_ms` may stay silent before its card turns stale."""
    return max(STALE_INTERVALS * interval_ms, STALE_MIN_MS)


def layout() -> html.Div:
    return html.Div(id="cards", className="cards")


def stale_count() -> html.Span:
    """Header note: how many sensors are stale (empty when none)."""
    return html.Span("", id="stale-count", className="stale-count")


def render(latest: dict[str, dict]) -> list[html.Div]:
    """Card shells; the browser fills in value and age (see assets/live.js)."""
    return [
        html.Div(
            className="card", id={"type": "card", "id": ident},
            children=[
                html.Div(f"{item['key']} · {TITLES[item['topic']]}", className="card-title"),
                html.Div("–", id={"type": "card-value", "id": ident}, className="card-value"),
                html.Div("", id={"type": "card-flag", "id": ident}, className="card-flag"),
                html.Div("", id={"type": "card-age", "id": ident}, className="card-age"),
            ],
        )
        for ident, item in latest.items()
    ]


def register(app) -> None:
    app.clientside_callback(
        ClientsideFunction("live", "cards"),
        Output({"type": "card-value", "id": ALL}, "children"),
        Output({"type": "card-age", "id": ALL}, "children"),
        Output({"type": "card", "id": ALL}, "className"),
        Output({"type": "card-flag", "id": ALL}, "children"),
        Output("stale-count", "children"),
        # Once a second (the ages move on), when a history load brings new card shells, and when
        # an alert starts or stops firing (dash_app/alerts.py).
        Input("tick", "n_intervals"), Input("cards", "children"), Input("alerts-firing", "data"),
        State("latest", "data"), State("live-config", "data"),
    )
