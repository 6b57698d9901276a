"""Figures as plain functions of pandas DataFrames: change the look here.

A frame has `ts` in epoch milliseconds (UTC), the topic's key column and numeric fields. The x
axis is a date axis fed with milliseconds, the same numbers the live stream appends, so
history and live points compare exactly. Each trace's `meta` names its series
("<key>|<field>"), which is how live points find their trace; traces live points must never
join (out-of-band markers, envelopes) have a `meta` starting with "!", which no key does.

A downsampled history frame also has `<field>_min` and `<field>_max` per bucket (see
pipeline.store.base): each series is then drawn as its mean line over a shaded min–max envelope,
so a spike the mean flattens still shows.
"""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from dash_app.charts import Chart
from pipeline.schema import TOPICS

FIELD_LABELS = {"memory_used": "used", "memory_total": "total"}
# The gap rule, history and live alike (assets/live.js gets these numbers from graphs.live_config):
# two neighbouring points of a series at least gap_threshold_ms() apart have a hole between them,
# and the line breaks there (a null point; Plotly's connectgaps is off).
GAP_INTERVALS = 5  # reporting intervals without a reading that make a hole (a few: jitter never does)
NO_DATA = "no data in this range"
OUTSIDE = "outside band"  # name of the markers trace of out-of-band points
OUTSIDE_ID = f"!{OUTSIDE}"  # its meta, which assets/live.js extends
# Plotly's "plotly_white" look, only the part line charts use: the whole template (colour
# scales, 3-D scenes, maps, two dozen trace types) travels in every figure, and dcc.Graph deep
# copies the layout on each live redraw.
TEMPLATE = go.layout.Template(layout={
    part: pio.templates["plotly_white"].layout[part]
    for part in ("colorway", "font", "hoverlabel", "hovermode", "paper_bgcolor", "plot_bgcolor", "shapedefaults",
                 "annotationdefaults", "title", "xaxis", "yaxis")
})
# Series colours set explicitly, in the order Plotly would give them, so an envelope takes its
# series' colour (an envelope trace would otherwise take the next colour of the cycle).
COLORWAY = TEMPLATE.layout.colorway
ENVELOPE_OPACITY = 0.2


def series_id(key: str, field: str) -> str:
    return f"{key}|{field}"


def envelope_id(key: str, field: str) -> str:
    """`meta` of a series' min–max envelope: starts with "!", so live points never route to it."""
    return f"!envelope|{key}|{field}"


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


def _holes(xs, threshold_ms: float) -> np.ndarray:
    """Indices of the points that come a hole after the one before (where with_gaps puts a null)."""
    return np.flatnonzero(np.diff(np.asarray(xs, dtype="float64")) >= threshold_ms) + 1


def envelope_shape(xs: np.ndarray, lows: np.ndarray, highs: np.ndarray, threshold_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """The min–max envelope as one outline for Plotly's fill="toself": per run of points without
    a hole, the lows left to right then the highs right to left; runs are separated by a NaN
    point (x halfway), and Plotly closes and fills each run on its own. (Two edge traces with
    fill="tonexty" would be simpler, but Plotly fills across the gaps of such traces, plotly.js
    issue 2736.) Float arrays: Plotly ships them as typed arrays, cheap to check and to send,
    and nothing extends this trace."""
    xs = np.asarray(xs, dtype="float64")
    ends = [*_holes(xs, threshold_ms).tolist(), len(xs)]
    out_x: list[np.ndarray] = []
    out_y: list[np.ndarray] = []
    start = 0
    for end in ends if len(xs) else ():
        if start:
            out_x.append([(xs[start - 1] + xs[start]) // 2])
            out_y.append([np.nan])
        out_x += [xs[start:end], xs[start:end][::-1]]
        out_y += [lows[start:end], highs[start:end][::-1]]
        start = end
    return (np.concatenate(out_x), np.concatenate(out_y)) if out_x else (np.array([]), np.array([]))


def envelope_ends(bucket: int, low: float, high: float) -> tuple[float, float]:
    """A live bucket's envelope points in drawing order: low then high in even buckets, high then
    low in odd ones (see envelope_path)."""
    return (low, high) if bucket % 2 == 0 else (high, low)


def envelope_path(xs, lows, highs, width_ms: int, threshold_ms: float) -> tuple[list, list]:
    """The envelope of a live chart as one line that assets/live.js extends as buckets close: at
    the start of each bucket of `width_ms` that spans values, its low and its high
    (envelope_ends), so the line goes up one bucket, along the top to the next, down it, along
    the bottom... One pixel wide in the band's colour, at about one bucket per pixel column, it
    looks like the filled band of envelope_shape, which cannot be extended. A null breaks it
    over a hole, as a line's.

    One unbroken line, because Plotly draws each run between nulls as an SVG path of its own: a
    segment per bucket (x, x, x; low, high, None) cost a path per pixel column and made a live
    redraw three times slower. Plain lists, as live traces need."""
    px: list = []
    py: list = []
    width = max(1, int(width_ms))
    for x, lo, hi in zip(xs, lows, highs):
        if lo < hi:
            bucket = int(x) // width  # x: the bucket's start, or a reading in it (history.live_buckets)
            px += [bucket * width] * 2
            py += envelope_ends(bucket, lo, hi)
    return with_gaps(px, py, threshold_ms)


def line_figure(
    chart: Chart, frame: pd.DataFrame, note: str | None = None, *, span: tuple[int, int] | None = None,
    interval_ms: float = 1000, bucket_ms: float = 0, mark_outside: bool = False, live_envelopes: bool = False,
) -> go.Figure:
    """The chart of `frame`. `span`: the [start, end) shown (the x axis is set to it, so an empty
    range shows its own time span); None in live mode; `bucket_ms`: the width the store averages
    into for this range (see gap_threshold_ms); `mark_outside`: add a markers trace of
    out-of-band points, an envelope's min and max included (in live mode even if empty: the live
    stream adds to it); `live_envelopes` (live mode, when the live buckets aggregate): every
    series gets an envelope line (envelope_path) that the live stream extends, from
    the frame's `<field>_min`/`<field>_max` where it has them.

    A frame with `<field>_min`/`<field>_max` columns (downsampled) outside live mode gets each
    series' envelope: a filled trace drawn under its mean line, in its colour, in its legend group
    (hiding the series hides both), with no legend entry of its own; the mean line's hover tells
    the bucket's min and max."""
    key = TOPICS[chart.topic].key
    fig = go.Figure()
    outside_x: list[int] = []
    outside_y: list[float] = []
    outside_of: list[str] = []  # each mark's series: assets/live.js replaces an open bucket's
    has_extremes = all(f"{f}_min" in frame and f"{f}_max" in frame for f in chart.fields)
    envelope = span is not None and has_extremes

    def shown(column: pd.Series) -> np.ndarray:  # stored unit -> the chart's unit
        return column.to_numpy(dtype="float64") * chart.scale

    number = chart.tickformat or ".4~g"
    color = 0
    for name, rows in frame.groupby(key, sort=True) if not frame.empty else ():
        xs = rows["ts"].tolist()
        threshold = series_threshold_ms(xs, interval_ms, bucket_ms)
        for field in chart.fields:
            label = name if len(chart.fields) == 1 else f"{name} {FIELD_LABELS.get(field, field)}"
            sid, rgb = series_id(name, field), COLORWAY[color % len(COLORWAY)]
            color += 1
            ys = shown(rows[field])
            lows, highs = (shown(rows[f"{field}_min"]), shown(rows[f"{field}_max"])) if has_extremes else (ys, ys)
            if mark_outside and chart.bands:
                # One mark a point (a bucket, or a raw reading): of its min and max the one further
                # out of range; its mean where neither is out (a danger zone between the two).
                # assets/live.js marks live buckets by the same rule.
                low_d, high_d, mean_d = (out_depth(chart.bands, v) for v in (lows, highs, ys))
                high_out = (high_d >= 0) & (high_d >= low_d)
                low_out = (low_d >= 0) & ~high_out
                mean_out = (mean_d >= 0) & (low_d < 0) & (high_d < 0)
                for marked, values in ((low_out, lows), (high_out, highs), (mean_out, ys)):
                    outside_x += np.asarray(xs)[marked].tolist()
                    outside_y += values[marked].tolist()
                    outside_of += [sid] * int(marked.sum())
            hover, customdata = None, None
            if live_envelopes and span is None:
                ex, ey = envelope_path(xs, lows.tolist(), highs.tolist(), bucket_ms, threshold) if has_extremes else ([], [])
                fig.add_trace(go.Scatter(
                    x=ex, y=ey, name=f"{label} min–max", mode="lines", meta=envelope_id(name, field), legendgroup=sid,
                    showlegend=False, line={"color": _rgba(rgb, ENVELOPE_OPACITY), "width": 1}, hoverinfo="skip",
                ))
            if envelope:
                ex, ey = envelope_shape(xs, lows, highs, threshold)
                fig.add_trace(go.Scatter(
                    x=ex, y=ey, name=f"{label} min–max", mode="lines", meta=envelope_id(name, field), legendgroup=sid,
                    showlegend=False, fill="toself", fillcolor=_rgba(rgb, ENVELOPE_OPACITY), line={"width": 0}, hoverinfo="skip",
                ))
                hover = (f"%{{y:{number}}} {chart.unit} (min %{{customdata[0]:{number}}}, max %{{customdata[1]:{number}}})"
                         f"<extra>{label}</extra>")
                # One (min, max) per point of the line, NaN at the null points with_gaps inserts;
                # an array, as above.
                customdata = np.insert(np.column_stack((lows, highs)), _holes(xs, threshold), np.nan, axis=0)
            gx, gy = with_gaps(xs, ys.tolist(), threshold)
            fig.add_trace(
                go.Scatter(
                    # Plain lists, not numpy arrays: plotly would ship those as typed arrays,
                    # which Plotly.extendTraces (dcc.Graph.extendData) cannot extend.
                    x=gx, y=gy, name=label, mode="lines", meta=sid, legendgroup=sid,
                    line={"color": rgb, "dash": "dot" if field == "memory_total" else None},
                    customdata=customdata, hovertemplate=hover,
                )
            )
    empty = not fig.data
    if outside_x or (mark_outside and chart.bands and span is None):  # live: one to extend, even if empty
        fig.add_trace(go.Scatter(
            x=outside_x, y=outside_y, customdata=outside_of, name=OUTSIDE, mode="markers", meta=OUTSIDE_ID,
            marker={"color": "#d9480f", "size": 5, "symbol": "circle-open"}, hoverinfo="x+y",
        ))
    fig.update_layout(
        title={"text": chart.title, "x": 0.01},
        margin={"l": 50, "r": 10, "t": 40, "b": 30},
        height=320,
        # Beside the plot: a legend below it hid the axis's two-row date labels (time, then day).
        legend={"orientation": "v", "x": 1.01, "xanchor": "left", "y": 1, "yanchor": "top"},
        uirevision=chart.id,  # keep the user's zoom and legend choices across live updates
        template=TEMPLATE,
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


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def out_depth(bands, values: np.ndarray) -> np.ndarray:
    """How far each value is out of range: its distance to the nearest limit of the bands it
    breaks (Band.outside), -1 where it breaks none. Over a whole array (calling Band.outside per
    value cost more than the rest of a raw hour's figure)."""
    out = np.full(len(values), -1.0)
    for band in bands:
        inside = np.ones(len(values), dtype=bool)
        if band.low is not None:
            inside &= values >= band.low
        if band.high is not None:
            inside &= values <= band.high
        limits = [limit for limit in (band.low, band.high) if limit is not None]
        distance = np.min([np.abs(values - limit) for limit in limits], axis=0) if limits else np.zeros(len(values))
        out = np.where(inside if band.alert else ~inside, np.maximum(out, distance), out)
    return out
