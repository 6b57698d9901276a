"""The Dash app: page sections, their callbacks, and the live websocket on the same port."""
from __future__ import annotations

import os

from dash import Dash, dcc, html
from dash_extensions import WebSocket
from flask import request
from flask_sock import Sock

from dash_app import cards, controls, graphs, status
from dash_app.live import hang_up, serve_frames
from dash_app.services import Services

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def create_app(services: Services) -> Dash:
    app = Dash(__name__, title="Sensor dashboard", assets_folder=ASSETS, update_title=None)
    app.layout = html.Div(
        className="page",
        children=[
            html.Header(className="header", children=[html.H1("Sensors"), status.layout(), controls.layout()]),
            cards.layout(),
            graphs.layout(),
            # Plumbing: the socket, what the history load hands to the live path, a 1 s tick.
            WebSocket(id="ws"),
            dcc.Store(id="cursor"),
            dcc.Store(id="live-state"),
            dcc.Store(id="reload", data=0),
            dcc.Store(id="latest"),
            dcc.Store(id="health"),
            dcc.Store(id="live-config", data=graphs.live_config(services)),
            dcc.Interval(id="tick", interval=1000),
        ],
    )
    graphs.register(app, services)
    controls.register(app)
    cards.register(app)
    status.register(app)

    sock = Sock(app.server)

    bucket_ms = services.cfg.live_window_s * 1000 // services.cfg.live_buckets

    @sock.route("/ws/live")
    def live(ws):
        try:
            serve_frames(ws, services.ring, services.health, request.args.get("since"), bucket_ms)
        finally:
            hang_up(ws)

    return app
