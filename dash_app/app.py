"""The Dash app: page sections, their callbacks, and the live websocket on the same port."""
from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from dash import Dash, dcc, html
from dash_extensions import WebSocket
from flask import Response, request
from flask_sock import Sock

from dash_app import cards, controls, graphs, status
from dash_app.live import Pages, hang_up, serve_frames
from dash_app.services import Services

log = logging.getLogger("dash_app")
LIVE_PATH = "/ws/live"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def create_app(services: Services) -> Dash:
    app = Dash(__name__, title="Sensor dashboard", assets_folder=ASSETS, update_title=None)
    app.layout = html.Div(
        className="page",
        children=[
            html.Header(
                className="header", children=[html.H1("Sensors"), status.layout(), html.Span(id="notice", className="notice"), controls.layout()]
            ),
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

    @app.server.before_request
    def same_origin_only():
        # A page of another site open in the same browser must not read the live stream.
        if request.path == LIVE_PATH and not same_origin(request.headers.get("Origin"), request.host):
            return Response("live stream: cross-origin request refused", status=403)
        return None

    @sock.route(LIVE_PATH)
    def live(ws):
        if not services.pages.admit(ws):
            log.warning("refused a live page: %d already streaming (LIVE_MAX_PAGES)", services.pages.limit)
            ws.close(Pages.BUSY, f"busy: {services.pages.limit} pages already streaming (LIVE_MAX_PAGES)")
            hang_up(ws)
            return
        try:
            serve_frames(ws, services.ring, services.health, request.args.get("since"), bucket_ms)
        finally:
            services.pages.leave(ws)
            hang_up(ws)

    return app


def same_origin(origin: str | None, host: str) -> bool:
    """Browsers send Origin with every websocket handshake; other clients (no Origin) may connect.

    Host may lack the port (some clients; a proxy on the default port): then the names decide."""
    if origin is None:
        return True
    page, server = urlsplit(origin), urlsplit(f"//{host}")
    default = {"http": 80, "https": 443}.get(page.scheme)
    return page.hostname == server.hostname and (server.port is None or (page.port or default) == server.port)
