"""The Dash app: two pages (Dash Pages) under one navigation, and the live websocket on the same port.

`/` is the sensor page (history and the live stream), `/pipeline` shows Kafka at work
(dash_app/pipeline_page.py). The navigation links load each page afresh (`refresh=True`): the
live path's browser state (assets/live.js) belongs to one load of the sensor page.
"""
from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import dash
from dash import Dash, dcc, html
from dash_extensions import WebSocket
from flask import Response, request
from flask_sock import Sock

from dash_app import alerts, cards, controls, graphs, pipeline_page, status
from dash_app.live import Pages, hang_up, serve_frames
from dash_app.services import Services

log = logging.getLogger("dash_app")
LIVE_PATH = "/ws/live"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def create_app(services: Services) -> Dash:
    app = Dash(__name__, title="Sensor dashboard", assets_folder=ASSETS, update_title=None, use_pages=True, pages_folder="")
    dash.register_page("sensors", path="/", name="Sensors", title="Sensor dashboard", order=0,
                       layout=lambda **query: sensor_layout(services, query))
    dash.register_page("pipeline", path=pipeline_page.PATH, name="Pipeline", title="Pipeline · Sensor dashboard", order=1,
                       layout=pipeline_page.layout)
    app.layout = html.Div([navigation(), dash.page_container])
    graphs.register(app, services)
    controls.register(app)
    cards.register(app)
    alerts.register(app, services)
    status.register(app)
    pipeline_page.register(app, services)

    sock = Sock(app.server)

    hosts = services.cfg.dashboard_hosts

    @app.server.before_request
    def known_host_and_same_origin_only():
        # A name this dashboard does not go by (DNS rebinding) gets nothing; and a page of
        # another site open in the same browser must not read the live stream.
        if hosts is not None and urlsplit(f"//{request.host}").hostname not in hosts:
            return Response(f"unknown host {request.host!r} (see DASH_ALLOWED_HOSTS)", status=403)
        if request.path == LIVE_PATH and not same_origin(request.headers.get("Origin"), request.host):
            return Response("live stream: cross-origin request refused", status=403)
        return None

    @sock.route(LIVE_PATH)
    def live(ws):
        if services.stopping.is_set():  # a page that reconnects to a stopping dashboard is let go
            ws.close(Pages.GOING_AWAY, "the dashboard is stopping")
            hang_up(ws)
            return
        hangup = services.pages.admit(ws)
        if hangup is None:
            log.warning("refused a live page: %d already streaming (LIVE_MAX_PAGES)", services.pages.limit)
            ws.close(Pages.BUSY, f"busy: {services.pages.limit} pages already streaming (LIVE_MAX_PAGES)")
            hang_up(ws)
            return
        try:
            # In the buckets of the resolution the page's history was drawn at (graphs.load).
            level = request.args.get("level", "")
            width = services.cfg.live_levels[graphs.live_level(services, int(level) if level.isdigit() else None)][1]
            serve_frames(ws, services.ring, services.health, request.args.get("since"), width, hangup)
        finally:
            services.pages.leave(ws)
            hang_up(ws)

    return app


def sensor_layout(services: Services, query: dict | None = None) -> html.Div:
    """The page at `/`: header with status and range controls, cards, charts, live plumbing.

    `query`: the URL's query string (Dash Pages passes it), e.g. ?range=24h or
    ?range=custom&from=2026-11-20&to=2026-11-22: a shared link reopens the same view."""
    return html.Div(
        className="page",
        children=[
            html.Header(
                className="header", children=[
                    html.H1("Sensors"), status.layout(), cards.stale_count(), html.Span(id="notice", className="notice"), html.Span(id="coarse", className="notice"),
                    controls.layout(query or {}),
                ]
            ),
            cards.layout(),
            alerts.layout(),
            graphs.layout(),
            # Plumbing: the socket, what the history load hands to the live path, a 1 s tick.
            WebSocket(id="ws"),
            dcc.Store(id="cursor"),
            dcc.Store(id="live-state"),
            dcc.Store(id="reload", data=0),
            dcc.Store(id="resolution"),  # the page's live resolution and its drawing time (assets/live.js)
            dcc.Store(id="latest"),
            dcc.Store(id="health"),
            dcc.Store(id="live-config", data=graphs.live_config(services)),
            dcc.Interval(id="tick", interval=1000),
        ],
    )


def navigation() -> html.Nav:
    """The one navigation both pages share."""
    return html.Nav(className="nav", children=[
        dcc.Link("Sensors", href="/", refresh=True, id="nav-sensors"),
        dcc.Link("Pipeline", href=pipeline_page.PATH, refresh=True, id="nav-pipeline"),
    ])


def same_origin(origin: str | None, host: str) -> bool:
    """Browsers send Origin with every websocket handshake; other clients (no Origin) may connect.

    Host may lack the port (some clients; a proxy on the default port): then the names decide."""
    if origin is None:
        return True
    page, server = urlsplit(origin), urlsplit(f"//{host}")
    default = {"http": 80, "https": 443}.get(page.scheme)
    return page.hostname == server.hostname and (server.port is None or (page.port or default) == server.port)
