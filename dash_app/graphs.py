"""The chart grid: history on load, re-query on zoom, live points appended in the browser."""
from __future__ import annotations

import time

import pandas as pd
from dash import ALL, MATCH, ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update, set_props
from dash.exceptions import PreventUpdate

from dash_app import alerts, cards, controls, history
from dash_app.charts import CHARTS
from dash_app.figures import OUTSIDE_ID, gap_threshold_ms, line_figure
from dash_app.services import Services
from pipeline.schema import TOPICS
from pipeline.store import StoreUnavailable
from pipeline.store.base import range_bucket_ms

CHART_IDS = {c.id: c for c in CHARTS}


def layout() -> html.Div:
    return html.Div(
        className="charts",
        children=[
            html.Div(className="chart-box", children=[
                dcc.Graph(id={"type": "chart", "id": c.id}, className="chart", config={"displaylogo": False}),
                html.Button("CSV", id={"type": "export", "id": c.id}, className="export", title="Download what this chart shows as CSV"),
                dcc.Download(id={"type": "download", "id": c.id}),
                # The [start, end) this chart last read from the store (page range or zoom): what CSV exports.
                dcc.Store(id={"type": "chart-range", "id": c.id}),
                dcc.Store(id={"type": "chart-zoom", "id": c.id}),  # a zoom's x span, null for "reset axes"
                dcc.Store(id={"type": "chart-part", "id": c.id}),  # its share of the last live frame (assets/live.js)
                dcc.Store(id={"type": "chart-drawn", "id": c.id}),  # the live frame it drew last
            ])
            for c in CHARTS
        ],
    )


def interval_ms(services: Services) -> float:
    """How often a sensor reports (RATE readings/s each)."""
    return 1000 / services.cfg.rate


def live_aggregates(services: Services, width_ms: int) -> bool:
    """Whether a live bucket `width_ms` wide holds several readings of a series: its envelope is then drawn."""
    return interval_ms(services) < width_ms


def live_level(services: Services, level) -> int:
    """A page's resolution (an index into Config.live_levels); the finest for anything else."""
    return level if isinstance(level, int) and 0 <= level < len(services.cfg.live_levels) else 0


def live_config(services: Services) -> dict:
    """What assets/live.js needs to route frames to traces and format the cards."""
    limits: dict[str, list] = {}
    for c in CHARTS:
        for field in c.fields:
            for b in c.bands:
                limits.setdefault(f"{c.topic}|{field}", []).append([b.low, b.high, b.alert, b.label, c.scale])
    return {
        "charts": {c.id: {"topic": c.topic, "fields": list(c.fields), "scale": c.scale} for c in CHARTS},
        "cards": cards.CARD_FIELDS,
        "cardTitles": cards.TITLES,
        "windowMs": services.cfg.live_window_s * 1000,
        # Per resolution (Config.live_levels): its bucket width, the gap rule of figures.py for
        # live points (raw at RATE or bucketed to that width), and whether its buckets hold
        # several readings (only then do fewer buckets mean fewer points to draw).
        "levels": [{"bucketMs": width, "gapMs": gap_threshold_ms(interval_ms(services), width), "aggregates": live_aggregates(services, width)}
                   for _, width in services.cfg.live_levels],
        "drawBudgetMs": services.cfg.live_draw_budget_ms,
        "staleMs": cards.stale_after_ms(interval_ms(services)),
        "limits": limits,
        "outsideMeta": OUTSIDE_ID,
        "alertCharts": alerts.alert_charts(services.cfg),
    }


def _axis_ms(x) -> int:
    """A date-axis position from relayoutData ("2026-11-25 10:00:00.5", in UTC, or epoch ms)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise TypeError(f"not an axis position: {x!r}")
    ms = int(x) if isinstance(x, (int, float)) else int(pd.Timestamp(x, tz="UTC").value // 1_000_000)
    if not 0 <= ms < 2**53:
        raise ValueError(f"axis position out of range: {x!r}")
    return ms


def register(app, services: Services) -> None:
    cfg = services.cfg

    @app.callback(
        Output({"type": "chart", "id": ALL}, "figure"),
        Output({"type": "chart-range", "id": ALL}, "data"),
        Output("cursor", "data"),
        Output("latest", "data"),
        Output("health", "data"),
        Output("coarse", "children"),
        Input("range", "value"),
        Input("custom-dates", "start_date"),
        Input("custom-dates", "end_date"),
        Input("reload", "data"),
        State("resolution", "data"),
    )
    def load(choice, start_date, end_date, _reload, resolution):
        try:
            start, end = controls.window(choice, start_date, end_date, int(time.time() * 1000), cfg.live_window_s)
        except controls.BadRange as exc:
            set_props("notice", {"children": str(exc)})
            raise PreventUpdate from None
        set_props("notice", {"children": ""})
        live = choice == "live"
        # Live charts are drawn at about one bucket per pixel column (LIVE_BUCKETS), or at the
        # coarser resolution the page asked for when its drawing was slow (assets/live.js); so
        # is their history, in the live stream's own buckets (the store cuts the window read in
        # `points` into buckets of exactly `width`: Config.live_levels).
        level = live_level(services, (resolution or {}).get("level")) if live else 0
        points, width = cfg.live_levels[level] if live else (cfg.live_max_points, 0)
        aggregates = live and live_aggregates(services, width)
        snap = history.snapshot(services.store, services.ring, services.health, start, end, points, with_ring=live,
                                live_bucket_ms=width if aggregates else 0)
        note = "store unreachable: showing live points only" if snap.error else None
        step = range_bucket_ms(start, end, points)
        figures = {
            c.id: line_figure(c, snap.frames[c.topic], note, span=None if live else (start, end), interval_ms=interval_ms(services),
                              bucket_ms=step, mark_outside=True, live_envelopes=aggregates)
            for c in CHARTS
        }
        shown_range = {"start": start, "end": end, "points": points, "live": live, "choice": choice}
        latest = history.latest(services.store, snap.ring_frames)
        # `load` tells the page this is a new history even when the stream has not moved since.
        shown = None if live else controls.describe(choice, start, end)
        cursor = {"cursor": snap.cursor, "load": time.time_ns(), "live": live, "shown": shown, "error": snap.error, "level": level}
        coarse = f"drawn in {width / 1000:g} s buckets: redraws were slow" if level else ""
        return [figures[c.id] for c in CHARTS], [shown_range] * len(CHARTS), cursor, latest, services.health.as_dict(), coarse

    # Plotly reports every relayout (a chart's first drawing, a resize), not only zooms: only a
    # zoom outside live mode goes to the server, so a page whose server is away (restarting)
    # sends nothing it would have ignored.
    app.clientside_callback(
        """(relayout, choice) => {
            const r = relayout || {};
            if (choice === "live") return window.dash_clientside.no_update;
            if (r["xaxis.range[0]"] !== undefined) return {span: [r["xaxis.range[0]"], r["xaxis.range[1]"]]};
            if (r["xaxis.range"]) return {span: r["xaxis.range"]};
            return r["xaxis.autorange"] ? {span: null} : window.dash_clientside.no_update;
        }""",
        Output({"type": "chart-zoom", "id": MATCH}, "data"),
        Input({"type": "chart", "id": MATCH}, "relayoutData"), State("range", "value"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output({"type": "chart", "id": MATCH}, "figure", allow_duplicate=True),
        Output({"type": "chart-range", "id": MATCH}, "data", allow_duplicate=True),
        Input({"type": "chart-zoom", "id": MATCH}, "data"),
        State("range", "value"),
        State("custom-dates", "start_date"),
        State("custom-dates", "end_date"),
        prevent_initial_call=True,
    )
    def zoom(zoomed, choice, start_date, end_date):
        """Outside live mode, a zoom re-reads its span at the finer resolution it now allows."""
        if choice == "live" or not isinstance(zoomed, dict):
            raise PreventUpdate
        span = zoomed.get("span")
        if span is not None and (not isinstance(span, list) or len(span) != 2):
            raise PreventUpdate
        chart = CHART_IDS.get(str((ctx.triggered_id or {}).get("id")))
        if chart is None:
            raise PreventUpdate
        try:
            if span:
                start, end = sorted(_axis_ms(x) for x in span)
            else:
                start, end = controls.window(choice, start_date, end_date, int(time.time() * 1000), cfg.live_window_s)
        except (ValueError, TypeError, OverflowError):  # not a date axis position; BadRange is a ValueError
            set_props("notice", {"children": "zoom ignored: the chart's range could not be read"})
            raise PreventUpdate from None
        try:
            frame = history.topic_range(services.store, TOPICS[chart.topic], start, end, cfg.live_max_points)
        except StoreUnavailable:
            return no_update, no_update
        figure = line_figure(chart, frame, span=(start, end), interval_ms=interval_ms(services),
                             bucket_ms=range_bucket_ms(start, end, cfg.live_max_points), mark_outside=True)
        return figure, {"start": start, "end": end, "points": cfg.live_max_points, "live": False, "choice": choice}

    @app.callback(
        Output({"type": "download", "id": MATCH}, "data"),
        Input({"type": "export", "id": MATCH}, "n_clicks"),
        State({"type": "chart-range", "id": MATCH}, "data"),
        prevent_initial_call=True,
    )
    def export(clicks, shown):
        """The chart's rows as CSV: the same store read as the chart (raw rows when the range fits
        in LIVE_MAX_POINTS per series, the store's bucket means, mins and maxes otherwise)."""
        chart = CHART_IDS.get(str((ctx.triggered_id or {}).get("id")))
        if not clicks or chart is None or not shown:
            raise PreventUpdate
        start, end, points = int(shown["start"]), int(shown["end"]), int(shown["points"])
        if shown.get("live"):  # the live window has moved on since the page loaded
            now = int(time.time() * 1000)
            start, end = now - cfg.live_window_s * 1000, now
        try:
            frame = history.topic_range(services.store, TOPICS[chart.topic], start, end, points)
        except StoreUnavailable as exc:
            set_props("notice", {"children": f"export failed: {exc}"})
            raise PreventUpdate from None
        return {"content": export_csv(chart, frame), "filename": export_name(chart, shown.get("choice"), start, end), "type": "text/csv"}

    app.clientside_callback(
        ClientsideFunction("live", "connect"),
        Output("ws", "url"),
        Input("cursor", "data"), Input("tick", "n_intervals"),
        State("ws", "state"), State("ws", "url"), State("live-state", "data"),
    )
    # Points reach the charts here, in the browser: no server callback runs per point. A frame
    # is split into a part per chart, and each chart draws its part in a task of its own.
    app.clientside_callback(
        ClientsideFunction("live", "frame"),
        Output({"type": "chart-part", "id": ALL}, "data"),
        Output("live-state", "data"),
        Output("latest", "data", allow_duplicate=True),
        Output("health", "data", allow_duplicate=True),
        Output("reload", "data"),
        Output("alerts-live", "data"),
        Input("ws", "message"),
        State({"type": "chart", "id": ALL}, "figure"), State("live-state", "data"), State("cursor", "data"),
        State("latest", "data"), State("health", "data"), State("reload", "data"), State("live-config", "data"),
        State("alerts-live", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction("live", "draw"),
        Output({"type": "chart", "id": MATCH}, "figure", allow_duplicate=True),
        Output({"type": "chart-drawn", "id": MATCH}, "data"),
        Input({"type": "chart-part", "id": MATCH}, "data"),
        State({"type": "chart", "id": MATCH}, "figure"), State({"type": "chart-drawn", "id": MATCH}, "data"),
        State("live-config", "data"), State("alerts-live", "data"), State("alerts-history", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction("live", "ack"),
        Output("ws", "send"), Output("resolution", "data"), Output("reload", "data", allow_duplicate=True),
        Input({"type": "chart-drawn", "id": ALL}, "data"), Input("live-state", "data"),
        State("resolution", "data"), State("cursor", "data"), State("live-config", "data"),
        prevent_initial_call=True,
    )


def export_csv(chart, frame: pd.DataFrame) -> str:
    """ts (ISO 8601 UTC, ms), the room/device, the chart's fields in stored units (bytes, not GiB).

    A downsampled range has, per field, the bucket's mean (`<field>`), then `<field>_min` and
    `<field>_max`; ts is then the bucket start. Raw rows have the fields alone."""
    key = TOPICS[chart.topic].key
    out = pd.DataFrame({"ts": pd.to_datetime(frame["ts"], unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"})
    out[key] = frame[key].to_numpy()
    for field in chart.fields:
        for column in (field, f"{field}_min", f"{field}_max"):
            if column in frame:
                out[column] = frame[column].to_numpy()
    return out.to_csv(index=False)


def export_name(chart, choice: str | None, start: int, end: int) -> str:
    """e.g. systemusage-cpu_24h_2026-11-24T1532Z_2026-11-25T1532Z.csv"""
    stamp = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H%M%SZ")
    topic = chart.topic if chart.id == chart.topic else f"{chart.topic}-{chart.id}"
    return f"{topic}_{choice or 'range'}_{stamp(start)}_{stamp(end)}.csv"
