"""A card per sensor: its latest value and how old it is, drawn in the browser (assets/live.js)."""
from __future__ import annotations

from dash import ClientsideFunction, Input, Output, State, html
from dash_extensions import Purify

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


def layout() -> Purify:
    return Purify(id="cards", className="cards")


def stale_count() -> html.Span:
    """Header note: how many sensors are stale (empty when none)."""
    return html.Span("", id="stale-count", className="stale-count")


def register(app) -> None:
    # The browser writes every card anew as one HTML string (assets/markup.js): one prop, one
    # update. An output per card and part (pattern-matching ids) made Dash's renderer search
    # every such id for each output: hundreds of milliseconds of the page's main thread a
    # second at 22 sensors.
    app.clientside_callback(
        ClientsideFunction("live", "cards"),
        Output("cards", "html"),
        Output("stale-count", "children"),
        # Once a second (the ages move on), after a history load (it may bring new sensors),
        # and when an alert starts or stops firing (dash_app/alerts.py).
        Input("tick", "n_intervals"), Input("cursor", "data"), Input("alerts-firing", "data"),
        State("latest", "data"), State("live-config", "data"),
    )
