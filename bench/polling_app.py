"""The baseline the live path has to beat: the same page fed by dcc.Interval polling (500 ms).

Only for bench/e2e_latency.py. Each tick runs a server callback that returns the points after the
page's cursor as extendData, the way a Dash app without a websocket would stream.
"""
from __future__ import annotations

import logging
import time

from dash import Dash, Input, Output, State, dcc, html, no_update

from dash_app import history
from dash_app.charts import CHARTS
from dash_app.controls import window
from dash_app.figures import line_figure
from dash_app.graphs import trace_positions
from dash_app.services import Services
from pipeline import config
from pipeline.daemon import setup_logging
from pipeline.schema import TOPICS

CHART = CHARTS[0]  # temperature
INTERVAL_MS = 500


def create_app(services: Services) -> Dash:
    app = Dash(__name__, title="Polling baseline", update_title=None)
    app.layout = html.Div([
        html.Span("connecting", id="status"),
        dcc.Graph(id={"type": "chart", "id": CHART.id}, className="chart"),
        dcc.Store(id="cursor"),
        dcc.Interval(id="poll", interval=INTERVAL_MS),
    ])
    cfg = services.cfg
    spec = TOPICS[CHART.topic]

    @app.callback(Output({"type": "chart", "id": CHART.id}, "figure"), Output("cursor", "data"), Output("status", "children"),
                  Input("status", "id"))
    def load(_):
        start, end = window("live", None, None, int(time.time() * 1000), cfg.live_window_s)
        snap = history.snapshot(services.store, services.ring, services.health, start, end, cfg.live_max_points, with_ring=True)
        fig = line_figure(CHART, snap.frames[CHART.topic])
        last = {t.meta: t.x[-1] for t in fig.data}  # extendData is not idempotent: skip what history holds
        return fig, {"seq": services.ring.head, "index": trace_positions({CHART.id: fig})[CHART.id], "last": last}, "live"

    @app.callback(Output({"type": "chart", "id": CHART.id}, "extendData"), Output("cursor", "data", allow_duplicate=True),
                  Input("poll", "n_intervals"), State("cursor", "data"), prevent_initial_call=True)
    def poll(_, cursor):
        if not cursor:  # history not loaded yet; never overwrite the cursor it is about to set
            return no_update, no_update
        rows, head = services.ring.since(cursor["seq"])
        add: dict[int, tuple[list, list]] = {}
        for ts, key, *values in rows.get(spec.name, []):
            meta = f"{key}|{CHART.fields[0]}"
            i = cursor["index"].get(meta)
            if i is None or ts <= cursor["last"][meta]:
                continue
            cursor["last"][meta] = ts
            xs, ys = add.setdefault(i, ([], []))
            xs.append(ts)
            ys.append(values[spec.numeric.index(CHART.fields[0])])
        cursor["seq"] = head
        if not add:
            return None, cursor
        idx = sorted(add)
        return ({"x": [add[i][0] for i in idx], "y": [add[i][1] for i in idx]}, idx, cfg.live_max_points), cursor

    return app


def main() -> None:
    cfg = config.load()
    setup_logging(cfg)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    services = Services.from_config(cfg).start()
    create_app(services).run(host=cfg.dash_host, port=cfg.dash_port, debug=False)


if __name__ == "__main__":
    main()
