"""The status badge: live, the range shown outside live, reconnecting, busy, broker or store unreachable."""
from __future__ import annotations

from dash import ClientsideFunction, Input, Output, html


def layout() -> html.Span:
    return html.Span("connecting", id="status", className="badge badge-wait")


def register(app) -> None:
    app.clientside_callback(
        ClientsideFunction("live", "badge"),
        Output("status", "children"), Output("status", "className"),
        Input("ws", "state"), Input("health", "data"), Input("cursor", "data"),
    )
