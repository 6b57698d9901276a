"""Figures as plain functions of pandas DataFrames: change the look here.

A frame has `ts` in epoch milliseconds (UTC), the topic's key column and numeric fields. The x
axis is a date axis fed with milliseconds, the same numbers the live stream appends, so
history and live points compare exactly. Each trace's `meta` names its series
("<key>|<field>"), which is how live points find their trace.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dash_app.charts import Chart
from pipeline.schema import TOPICS

FIELD_LABELS = {"memory_used": "used", "memory_total": "total"}


def series_id(key: str, field: str) -> str:
    return f"{key}|{field}"


def line_figure(chart: Chart, frame: pd.DataFrame, note: str | None = None) -> go.Figure:
    key = TOPICS[chart.topic].key
    fig = go.Figure()
    for name, rows in frame.groupby(key, sort=True) if not frame.empty else ():
        for field in chart.fields:
            label = name if len(chart.fields) == 1 else f"{name} {FIELD_LABELS.get(field, field)}"
            fig.add_trace(
                go.Scatter(
                    # Plain lists, not numpy arrays: plotly would ship those as typed arrays,
                    # which Plotly.extendTraces (dcc.Graph.extendData) cannot extend.
                    x=rows["ts"].tolist(), y=rows[field].tolist(), name=label, mode="lines",
                    meta=series_id(name, field), line={"dash": "dot"} if field == "memory_total" else None,
                )
            )
    fig.update_layout(
        title={"text": chart.title, "x": 0.01},
        margin={"l": 50, "r": 10, "t": 40, "b": 30},
        height=300,
        legend={"orientation": "h", "y": -0.15},
        uirevision=chart.id,  # keep the user's zoom and legend choices across live updates
        template="plotly_white",
        # "allow": Plotly's default for these axes measures every tick label against the page on
        # each redraw, the largest single cost of a live redraw in Chromium's profile.
        xaxis={"type": "date", "title": None, "ticklabeloverflow": "allow"},
        # With a tickformat the unit rides on the ticks (5.1GB); otherwise it titles the axis.
        yaxis={
            "title": None if chart.tickformat else chart.unit, "tickformat": chart.tickformat,
            "ticksuffix": chart.unit if chart.tickformat else None, "ticklabeloverflow": "allow",
        },
    )
    if note:
        fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14, "color": "#888"})
    return fig
