"""Figures as plain functions of pandas DataFrames: change the look here.

A frame has `ts` in epoch milliseconds (UTC), the topic's key column and numeric fields. The x
axis is a date axis fed with milliseconds, the same numbers the live stream appends, so
history and live points compare exactly. Each trace's `meta` names its series
("<key>|<field>"), which is how live points find their trace.
"""
from __future__ import annotations

import math
from itertools import pairwise

import pandas as pd
import plotly.graph_objects as go

from dash_app.charts import Chart
from pipeline.schema import TOPICS

FIELD_LABELS = {"memory_used": "used", "memory_total": "total"}
# The gap rule, history and live alike (assets/live.js gets these numbers from graphs.live_config):
# two neighbouring points of a series at least gap_threshold_ms() apart have a hole between them,
# and the line breaks there (a null point; Plotly's connectgaps is off).
GAP_INTERVALS = 5  # reporting intervals without a reading that make a hole (a few: jitter never does)
NO_DATA = "no data in this range"
OUTSIDE = "outside band"  # name of the markers trace of out-of-band points (history only)


def series_id(key: str, field: str) -> str:
    return f"{key}|{field}"


def gap_threshold_ms(interval_ms: float, bucket_ms: float = 0) -> float:
    """Smallest distance between two neighbouring points of a series that is a hole.

    `interval_ms`: how often the series reports (1000 / RATE). `bucket_ms`: width of the buckets
    its points were cut into (history averaged by the store, live buckets), or 0 when raw. A
    hole is GAP_INTERVALS readings missed, or an empty bucket: bucket starts one empty bucket
    apart are 2 buckets apart, while points of neighbouring buckets are always less than that."""
    return max(GAP_INTERVALS * interval_ms, 2 * bucket_ms)


def series_threshold_ms(xs: list[int], interval_ms: float, bucket_ms: float) -> float:
    """The gap threshold of one history series: its reporting interval is the configured one,
    or its own (median spacing) when slower; a series spaced at least a bucket apart is treated
    as buckets of that spacing (a store's averages, or a slow raw series)."""
    if len(xs) < 3:
        return gap_threshold_ms(interval_ms, bucket_ms)
    spacing = sorted(b - a for a, b in pairwise(xs))[(len(xs) - 1) // 2]
    if bucket_ms and spacing >= bucket_ms:
        return gap_threshold_ms(interval_ms, spacing)
    return gap_threshold_ms(max(interval_ms, spacing), bucket_ms)


def with_gaps(xs: list, ys: list, threshold_ms: float) -> tuple[list, list]:
    """xs, ys with a null point (x halfway, y None) wherever neighbours are >= threshold apart."""
    if not xs or not math.isfinite(threshold_ms):
        return list(xs), list(ys)
    out_x, out_y = [xs[0]], [ys[0]]
    for prev, x, y in zip(xs, xs[1:], ys[1:]):
        if x - prev >= threshold_ms:
            out_x.append((prev + x) // 2)
            out_y.append(None)
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


def line_figure(
    chart: Chart, frame: pd.DataFrame, note: str | None = None, *, span: tuple[int, int] | None = None,
    interval_ms: float = 1000, bucket_ms: float = 0, mark_outside: bool = False,
) -> go.Figure:
    """The chart of `frame`. `span`: the [start, end) shown (the x axis is set to it, so an empty
    range shows its own time span); `bucket_ms`: the width the store averages into for this
    range (see gap_threshold_ms); `mark_outside`: add a markers trace of out-of-band points."""
    key = TOPICS[chart.topic].key
    fig = go.Figure()
    outside_x: list[int] = []
    outside_y: list[float] = []
    for name, rows in frame.groupby(key, sort=True) if not frame.empty else ():
        xs = rows["ts"].tolist()
        threshold = series_threshold_ms(xs, interval_ms, bucket_ms)
        for field in chart.fields:
            label = name if len(chart.fields) == 1 else f"{name} {FIELD_LABELS.get(field, field)}"
            ys = (rows[field] * chart.scale).tolist() if chart.scale != 1 else rows[field].tolist()
            if mark_outside and chart.bands:
                for x, y in zip(xs, ys):
                    if any(b.outside(y) for b in chart.bands):
                        outside_x.append(x)
                        outside_y.append(y)
            gx, gy = with_gaps(xs, ys, threshold)
            fig.add_trace(
                go.Scatter(
                    # Plain lists, not numpy arrays: plotly would ship those as typed arrays,
                    # which Plotly.extendTraces (dcc.Graph.extendData) cannot extend.
                    x=gx, y=gy, name=label, mode="lines",
                    meta=series_id(name, field), line={"dash": "dot"} if field == "memory_total" else None,
                )
            )
    if outside_x:
        fig.add_trace(go.Scatter(
            x=outside_x, y=outside_y, name=OUTSIDE, mode="markers", meta=f"!{OUTSIDE}",
            marker={"color": "#d9480f", "size": 5, "symbol": "circle-open"}, hoverinfo="x+y",
        ))
    empty = not fig.data
    fig.update_layout(
        title={"text": chart.title, "x": 0.01},
        margin={"l": 50, "r": 10, "t": 40, "b": 30},
        height=320,
        # Beside the plot: a legend below it hid the axis's two-row date labels (time, then day).
        legend={"orientation": "v", "x": 1.01, "xanchor": "left", "y": 1, "yanchor": "top"},
        uirevision=chart.id,  # keep the user's zoom and legend choices across live updates
        template="plotly_white",
        # Tick labels may overflow: by default Plotly measures each against the page on every
        # redraw, which made a live redraw 15-25 % slower in Chromium.
        xaxis={"type": "date", "title": None, "ticklabeloverflow": "allow"},
        # With a tickformat the unit rides on the ticks (5.1 GiB); otherwise it titles the axis.
        yaxis={
            "title": None if chart.tickformat else chart.unit, "tickformat": chart.tickformat,
            "ticksuffix": f" {chart.unit}" if chart.tickformat else None, "ticklabeloverflow": "allow",
        },
    )
    if span is not None:
        fig.update_xaxes(range=list(span), autorange=False)
    else:  # live: the axis follows the points (a range left by a history view must not stick)
        fig.update_xaxes(autorange=True)
    for band in chart.bands:
        color = "#d9480f" if band.alert else "#2f9e44"
        if band.low is not None and band.high is not None:
            fig.add_hrect(y0=band.low, y1=band.high, fillcolor=color, opacity=0.08, line_width=0, layer="below")
        limits = [v for v in (band.low, band.high) if v is not None]
        for i, limit in enumerate(limits):
            label = {"annotation_text": band.label, "annotation_position": "top left", "annotation_font": {"size": 10, "color": "#7b8794"}}
            fig.add_hline(y=limit, line={"color": color, "width": 1, "dash": "dash"}, opacity=0.6, layer="below",
                          **(label if i == len(limits) - 1 else {}))
    if empty:
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
        note = f"{note} · {NO_DATA}" if note else NO_DATA
    if note:
        fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14, "color": "#888"})
    return fig
