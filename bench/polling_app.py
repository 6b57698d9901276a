"""The baseline the live path has to beat: the same charts fed by dcc.Interval polling (500 ms).

Only for bench/e2e_latency.py. Every tick runs a server callback that returns every point after
the page's cursor as extendData, the way a Dash app without a websocket would stream.
"""
from __future__ import annotations

import time

from dash import ALL, Dash, Input, Output, State, dcc, html, no_update

from dash_app import history
from dash_app.charts import CHARTS
from dash_app.controls import window
from dash_app.figures import line_figure
from dash_app.services import Services
from pipeline import config
from pipeline.daemon import setup_logging
from pipeline.schema import TOPICS

INTERVAL_MS = 500


def create_app(services: Services) -> Dash:
    app = Dash(__name__, title="Polling baseline", update_title=None)
    app.layout = html.Div([
        html.Span("connecting", id="status"),
        *(dcc.Graph(id={"type": "chart", "id": c.id}, className="chart") for c in CHARTS),
        dcc.Store(id="cursor"),
        dcc.Interval(id="poll", interval=INTERVAL_MS),
    ])
    cfg = services.cfg

    @app.callback(Output({"type": "chart", "id": ALL}, "figure"), Output("cursor", "data"), Output("status", "children"),
                  Input("status", "id"))
    def load(_):
        start, end = window("live", None, None, int(time.time() * 1000), cfg.live_window_s)
        snap = history.snapshot(services.store, services.ring, services.health, start, end, cfg.live_max_points, with_ring=True)
        figures = [line_figure(c, snap.frames[c.topic]) for c in CHARTS]
        traces = {c.id: {t.meta: i for i, t in enumerate(f.data)} for c, f in zip(CHARTS, figures)}
        # extendData is not idempotent: skip what the history holds.
        last = {c.id: {t.meta: t.x[-1] for t in f.data} for c, f in zip(CHARTS, figures)}
        return figures, {"seq": int(snap.cursor.split(":")[1]), "traces": traces, "last": last}, "live"

    @app.callback(Output({"type": "chart", "id": ALL}, "extendData"), Output("cursor", "data", allow_duplicate=True),
                  Input("poll", "n_intervals"), State("cursor", "data"), prevent_initial_call=True)
    def poll(_, cursor):
        if not cursor:  # history not loaded yet; never overwrite the cursor it is about to set
            return [no_update] * len(CHARTS), no_update
        rows, head = services.ring.since(cursor["seq"])
        out = []
        for chart in CHARTS:
            spec, traces, last = TOPICS[chart.topic], cursor["traces"][chart.id], cursor["last"][chart.id]
            add: dict[int, tuple[list, list]] = {}
            for row in rows.get(spec.name, []):
                for field in chart.fields:
                    meta = f"{row[1]}|{field}"
                    i = traces.get(meta)
                    if i is None or row[0] <= last[meta]:
                        continue
                    last[meta] = row[0]
                    xs, ys = add.setdefault(i, ([], []))
                    xs.append(row[0])
                    ys.append(row[spec.series_columns.index(field)])
            idx = sorted(add)
            out.append(({"x": [add[i][0] for i in idx], "y": [add[i][1] for i in idx]}, idx) if idx else no_update)
        cursor["seq"] = head
        return out, cursor

    return app


def main() -> None:
    cfg = config.load_or_exit()
    setup_logging(cfg.log_level)
    services = Services.from_config(cfg).start()
    create_app(services).run(host=cfg.dash_host, port=cfg.dash_port, debug=False)


if __name__ == "__main__":
    main()
