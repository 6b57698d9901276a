"""The status badge: live, reconnecting, broker unreachable or store unreachable."""
from __future__ import annotations

from dash import ClientsideFunction, Input, Output, State, html


def layout() -> html.Span:
    return html.Span("connecting", id="status", className="badge badge-wait")


def register(app) -> None:
    app.clientside_callback(
        ClientsideFunction("live", "badge"),
        Output("status", "children"), Output("status", "className"),
        Input("ws", "state"), Input("health", "data"), State("cursor", "data"),
    )
