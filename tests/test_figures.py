"""Figures without a browser: the gap rule, empty ranges, units, bands, envelopes, export files and URL views."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from dash_app.cards import STALE_MIN_MS, stale_after_ms
from dash_app.charts import CHARTS, Band
from dash_app.controls import from_query
from dash_app.figures import (
    ENVELOPE_OPACITY,
    GAP_INTERVALS,
    NO_DATA,
    OUTSIDE,
    OUTSIDE_ID,
    envelope_shape,
    gap_threshold_ms,
    line_figure,
    out_depth,
    series_threshold_ms,
    with_gaps,
)
from dash_app.graphs import export_csv, export_name
from pipeline.store.base import bucket_ms

CHART = {c.id: c for c in CHARTS}
T0 = 1_795_000_000_000


def temps(xs, room="kitchen", value=21.0):
    return pd.DataFrame({"ts": xs, "room": room, "value": [value] * len(xs)})


def breaks(trace) -> list[tuple[int, int]]:
    """(x before, x after) of every null point of a trace."""
    x, y = list(trace.x), list(trace.y)
    return [(x[i - 1], x[i + 1]) for i, v in enumerate(y) if v is None]


def test_threshold_is_a_few_reporting_intervals_or_an_empty_bucket():
    assert gap_threshold_ms(1000) == GAP_INTERVALS * 1000
    assert gap_threshold_ms(25, 500) == 1000  # fast series in live buckets: two buckets
    assert gap_threshold_ms(1000, 300_000) == 600_000


def test_with_gaps_inserts_a_null_point_halfway_only_where_neighbours_are_far_apart():
    xs, ys = with_gaps([0, 1000, 2000, 9000, 10_000], [1, 2, 3, 4, 5], 5000)
    assert xs == [0, 1000, 2000, 5500, 9000, 10_000]
    assert ys == [1, 2, 3, None, 4, 5]
    assert with_gaps([0, 4999], [1, 2], 5000) == ([0, 4999], [1, 2])  # just short of the threshold: no break
    assert with_gaps([0, 5000], [1, 2], 5000)[1] == [1, None, 2]  # at it: a break
    assert with_gaps([], [], 5000) == ([], [])


def test_a_two_hour_hole_in_raw_readings_breaks_the_line_once():
    xs = [T0 + i * 1000 for i in range(600)] + [T0 + 2 * 3_600_000 + i * 1000 for i in range(600)]
    fig = line_figure(CHART["temperature"], temps(xs), interval_ms=1000, bucket_ms=bucket_ms(xs[0], xs[-1] + 1, 2000))
    (trace,) = fig.data
    assert breaks(trace) == [(T0 + 599_000, T0 + 2 * 3_600_000)]
    assert [x for x, y in zip(trace.x, trace.y) if y is not None] == xs


def test_jittery_readings_and_neighbouring_buckets_do_not_break():
    jitter = [T0 + i * 1000 + (300 if i % 2 else -300) for i in range(100)]
    assert not breaks(line_figure(CHART["temperature"], temps(jitter), interval_ms=1000).data[0])
    # 24 h averaged into the store's buckets (SQLite rounds a bucket up to whole 10 s): one per bucket, none empty.
    nominal = bucket_ms(T0, T0 + 86_400_000, 2000)
    step = -(-nominal // 10_000) * 10_000
    buckets = [T0 + i * step for i in range(1700)]
    assert not breaks(line_figure(CHART["temperature"], temps(buckets), interval_ms=1000, bucket_ms=nominal).data[0])


def test_one_empty_bucket_breaks_a_downsampled_line():
    nominal = bucket_ms(T0, T0 + 7 * 86_400_000, 2000)
    buckets = [T0 + i * nominal for i in range(1000) if i != 500]
    (trace,) = line_figure(CHART["temperature"], temps(buckets), interval_ms=1000, bucket_ms=nominal).data
    assert breaks(trace) == [(T0 + 499 * nominal, T0 + 501 * nominal)]


def test_a_series_slower_than_the_configured_rate_is_not_cut_at_every_point():
    """History recorded at one reading per 10 s, shown by a dashboard configured for 1/s."""
    xs = [T0 + i * 10_000 for i in range(360)]
    assert series_threshold_ms(xs, 1000, bucket_ms(T0, T0 + 3_600_000, 2000)) >= 20_000
    assert not breaks(line_figure(CHART["temperature"], temps(xs), interval_ms=1000, bucket_ms=1800).data[0])
    holed = xs[:100] + xs[200:]
    assert len(breaks(line_figure(CHART["temperature"], temps(holed), interval_ms=1000, bucket_ms=1800).data[0])) == 1


def test_an_empty_range_shows_its_own_span_and_says_so():
    empty = pd.DataFrame(columns=["ts", "device", "cpu_percent", "memory_used", "memory_total"])
    fig = line_figure(CHART["memory"], empty, span=(T0, T0 + 3_600_000))
    assert list(fig.layout.xaxis.range) == [T0, T0 + 3_600_000]
    assert any(a.text == NO_DATA for a in fig.layout.annotations)
    with_data = line_figure(CHART["temperature"], temps([T0, T0 + 1000]), span=(T0, T0 + 3_600_000))
    assert not any(NO_DATA in (a.text or "") for a in with_data.layout.annotations)


def test_bytes_are_shown_in_gib_on_the_axis():
    frame = pd.DataFrame({"ts": [T0, T0 + 1000], "device": "d", "cpu_percent": 1.0,
                          "memory_used": [2 * 2**30, 3 * 2**30], "memory_total": [16 * 2**30] * 2})
    fig = line_figure(CHART["memory"], frame)
    used = next(t for t in fig.data if t.meta == "d|memory_used")
    assert list(used.y) == [2.0, 3.0]
    assert fig.layout.yaxis.ticksuffix == " GiB"


def test_bands_are_drawn_and_points_outside_marked():
    assert Band(18, 26, "comfort").outside(30) and not Band(18, 26, "comfort").outside(20)
    assert Band(90, None, "hot", alert=True).outside(95) and not Band(90, None, "hot", alert=True).outside(50)
    frame = pd.DataFrame({"ts": [T0, T0 + 1000, T0 + 2000], "room": "k", "value": [20.0, 30.0, 21.0]})
    fig = line_figure(CHART["temperature"], frame, mark_outside=True)
    marks = next(t for t in fig.data if t.name == OUTSIDE)
    assert list(marks.x) == [T0 + 1000] and list(marks.y) == [30.0]
    assert fig.layout.shapes, "the comfort band is drawn"
    assert all(t.name != OUTSIDE for t in line_figure(CHART["temperature"], frame).data)  # not asked: none
    # Live: the markers trace is there even when nothing is outside, for the stream to add to.
    live = line_figure(CHART["temperature"], temps([T0, T0 + 1000]), mark_outside=True)
    assert live.data[-1].meta == OUTSIDE_ID and list(live.data[-1].x) == []
    empty = line_figure(CHART["temperature"], temps([]), mark_outside=True)
    assert any(NO_DATA in a.text for a in empty.layout.annotations)


def downsampled(xs, room="kitchen", mean=21.0, low=20.0, high=22.0, spike: dict | None = None):
    """A store's downsampled frame: per bucket the mean and the envelope; `spike` {ts: max}."""
    spike = spike or {}
    return pd.DataFrame({"ts": xs, "room": room, "value": [mean] * len(xs), "value_min": [low] * len(xs),
                         "value_max": [spike.get(x, high) for x in xs]})


def envelope_of(fig, meta: str):
    return next(t for t in fig.data if t.meta == f"!envelope|{meta}")


def test_a_downsampled_series_gets_its_envelope_under_its_line_tied_to_its_legend_entry():
    step = bucket_ms(T0, T0 + 86_400_000, 2000)
    xs = [T0 + i * step for i in range(1000)]
    frame = pd.concat([downsampled(xs, spike={xs[500]: 95.0}), downsampled(xs, room="hall", mean=19.0)])
    fig = line_figure(CHART["temperature"], frame, span=(T0, T0 + 86_400_000), bucket_ms=step, mark_outside=True)
    metas = [t.meta for t in fig.data]
    assert metas == ["!envelope|hall|value", "hall|value", "!envelope|kitchen|value", "kitchen|value", f"!{OUTSIDE}"]
    for room in ("hall", "kitchen"):
        line, band = next(t for t in fig.data if t.meta == f"{room}|value"), envelope_of(fig, f"{room}|value")
        assert band.meta.startswith("!"), "live points route by meta: never to an envelope"
        assert band.legendgroup == line.legendgroup == line.meta and band.showlegend is False
        assert band.fill == "toself" and band.line.width == 0
        r, g, b = (int(line.line.color[i:i + 2], 16) for i in (1, 3, 5))
        assert band.fillcolor.startswith(f"rgba({r}, {g}, {b}, ")  # the series' own colour, see-through
        assert line.customdata[:2].tolist() == [[20.0, 22.0]] * 2  # the hover's min and max
    assert fig.data[1].line.color != fig.data[3].line.color
    # The spike the mean flattens is the envelope's top, and it is marked as outside the comfort band.
    kitchen, band = next(t for t in fig.data if t.meta == "kitchen|value"), envelope_of(fig, "kitchen|value")
    assert max(kitchen.y) == 21.0 and np.nanmax(band.y) == 95.0
    assert band.x[np.nanargmax(band.y)] == xs[500]
    marks = next(t for t in fig.data if t.name == OUTSIDE)
    assert list(zip(marks.x, marks.y)) == [(xs[500], 95.0)]


def test_an_empty_bucket_breaks_the_envelope_too():
    step = bucket_ms(T0, T0 + 7 * 86_400_000, 2000)
    xs = [T0 + i * step for i in range(10) if i != 5]
    fig = line_figure(CHART["temperature"], downsampled(xs), span=(T0, T0 + 7 * 86_400_000), bucket_ms=step)
    band, line = envelope_of(fig, "kitchen|value"), next(t for t in fig.data if t.meta == "kitchen|value")
    assert breaks(line) == [(xs[4], xs[5])]
    # Two closed shapes, one per run: the lows left to right, then the highs back; a gap between.
    (gap,) = np.flatnonzero(np.isnan(band.y))
    assert band.x[:gap].tolist() == xs[:5] + xs[:5][::-1] and band.y[:gap].tolist() == [20.0] * 5 + [22.0] * 5
    assert band.x[gap + 1:].tolist() == xs[5:] + xs[5:][::-1]
    assert band.x[gap] == (xs[4] + xs[5]) // 2
    # The hover's (min, max) line up with the line's points, its null point included.
    assert len(line.customdata) == len(line.y) and np.isnan(line.customdata[5]).all()
    assert line.customdata[6].tolist() == [20.0, 22.0]
    assert [a.size for a in envelope_shape([], np.array([]), np.array([]), 1000)] == [0, 0]


def test_raw_ranges_and_live_charts_of_slow_series_have_no_envelope():
    xs = [T0 + i * 1000 for i in range(100)]
    raw = line_figure(CHART["temperature"], temps(xs), span=(T0, T0 + 3_600_000))
    live = line_figure(CHART["temperature"], downsampled(xs))  # live, buckets not aggregating: none
    for fig in (raw, live):
        assert [t.meta for t in fig.data] == ["kitchen|value"]
        assert fig.data[0].customdata is None


def test_live_charts_of_fast_series_get_envelopes_the_stream_extends():
    xs = [T0 + i * 500 for i in range(4)] + [T0 + 10_000]  # a hole of 19 buckets before the last
    frame = pd.concat([downsampled(xs), downsampled(xs, room="hall", low=21.0, high=21.0)])  # hall: one value a bucket
    fig = line_figure(CHART["temperature"], frame, live_envelopes=True, bucket_ms=500)
    assert [t.meta for t in fig.data] == ["!envelope|hall|value", "hall|value", "!envelope|kitchen|value", "kitchen|value"]
    kitchen, hall = envelope_of(fig, "kitchen|value"), envelope_of(fig, "hall|value")
    # Per bucket that spans values its low and high, in the order dash_app.live.Buckets sends them
    # (T0 is an even bucket): one line up, along the top, down, along the bottom; broken over the hole.
    assert list(kitchen.x) == [x for x in xs[:4] for _ in range(2)] + [(xs[3] + xs[4]) // 2] + [xs[4]] * 2
    assert list(kitchen.y) == [20.0, 22.0, 22.0, 20.0] * 2 + [None, 20.0, 22.0]
    assert list(hall.x) == [] and list(hall.y) == []  # every series has one, for the stream to extend
    r, g, b = (int(fig.data[3].line.color[i:i + 2], 16) for i in (1, 3, 5))
    assert kitchen.line.color == f"rgba({r}, {g}, {b}, {ENVELOPE_OPACITY})"  # the series' colour, see-through
    # Without extremes (the live window fits raw): the envelopes start empty.
    assert all(len(t.x) == 0 for t in line_figure(CHART["temperature"], temps(xs), live_envelopes=True).data if t.meta.startswith("!"))


def test_the_envelope_is_in_the_charts_unit():
    frame = pd.DataFrame({"ts": [T0, T0 + 60_000], "device": "d", "cpu_percent": 1.0,
                          "memory_used": [2 * 2**30] * 2, "memory_used_min": [2**30] * 2, "memory_used_max": [4 * 2**30] * 2,
                          "memory_total": [16 * 2**30] * 2, "memory_total_min": [16 * 2**30] * 2, "memory_total_max": [16 * 2**30] * 2})
    fig = line_figure(CHART["memory"], frame, span=(T0, T0 + 86_400_000), bucket_ms=60_000)
    assert envelope_of(fig, "d|memory_used").y.tolist() == [1.0, 1.0, 4.0, 4.0]
    assert envelope_of(fig, "d|memory_total").y.tolist() == [16.0] * 4


def test_out_depth_over_an_array_agrees_with_band_outside():
    values = np.array([-5.0, 17.9, 18.0, 22.0, 26.0, 26.1, 89.9, 90.0, 95.0])
    for bands in ((Band(18, 26, "comfort"),), (Band(90, None, "hot", alert=True),), (Band(None, 0, "frost", alert=True), Band(None, 30, "x")),
                  (Band(20, 25, "zone", alert=True),)):
        assert (out_depth(bands, values) >= 0).tolist() == [any(b.outside(v) for b in bands) for v in values], bands
    assert out_depth((Band(18, 26, "comfort"),), np.array([15.0, 20.0, 27.0])).tolist() == [3.0, -1.0, 1.0]


def test_a_bucket_is_marked_once_at_its_reading_furthest_out_of_range():
    xs = [T0, T0 + 60_000, T0 + 120_000]
    frame = pd.DataFrame({"ts": xs, "device": "d", "cpu_percent": [95.0, 50.0, 89.0], "cpu_percent_min": [92.0, 10.0, 80.0],
                          "cpu_percent_max": [100.0, 91.0, 99.0], "memory_used": 1.0, "memory_used_min": 1.0, "memory_used_max": 1.0,
                          "memory_total": 2.0, "memory_total_min": 2.0, "memory_total_max": 2.0})
    fig = line_figure(CHART["cpu"], frame, span=(T0, T0 + 86_400_000), bucket_ms=60_000, mark_outside=True)
    marks = next(t for t in fig.data if t.name == OUTSIDE)
    # Above 90 %: the first bucket at its max only (its min and mean are above too), the others at their max.
    assert list(zip(marks.x, marks.y)) == [(xs[0], 100.0), (xs[1], 91.0), (xs[2], 99.0)]


def test_stale_after_several_intervals_but_never_sooner_than_the_floor():
    assert stale_after_ms(1000) == STALE_MIN_MS
    assert stale_after_ms(10_000) == 50_000


def test_export_csv_and_name():
    frame = pd.DataFrame({"ts": [T0, T0 + 1500], "device": ["a", "b"], "cpu_percent": [1.5, 2.5],
                          "memory_used": [1.0, 2.0], "memory_total": [3.0, 4.0]})
    back = pd.read_csv(io.StringIO(export_csv(CHART["cpu"], frame)))
    assert list(back.columns) == ["ts", "device", "cpu_percent"]
    assert pd.to_datetime(back["ts"]).astype("datetime64[ms, UTC]").astype("int64").tolist() == [T0, T0 + 1500]
    assert export_name(CHART["cpu"], "24h", T0, T0 + 86_400_000).startswith("systemusage-cpu_24h_")
    # A downsampled range: each field's mean, min and max per bucket.
    frame["cpu_percent_min"], frame["cpu_percent_max"] = [0.5, 1.0], [9.5, 99.0]
    back = pd.read_csv(io.StringIO(export_csv(CHART["cpu"], frame)))
    assert list(back.columns) == ["ts", "device", "cpu_percent", "cpu_percent_min", "cpu_percent_max"]
    assert back["cpu_percent_max"].tolist() == [9.5, 99.0]
    assert export_name(CHART["temperature"], "1h", T0, T0 + 1).startswith("temperature_1h_")


@pytest.mark.parametrize("query, view", [
    ({}, ("live", None, None)),
    ({"range": "24h"}, ("24h", None, None)),
    ({"range": "custom", "from": "2026-11-20", "to": "2026-11-22"}, ("custom", "2026-11-20", "2026-11-22")),
    ({"range": "nonsense"}, ("live", None, None)),
    ({"range": "custom", "from": "2026-13-45", "to": "x"}, ("custom", None, None)),
])
def test_url_query_to_view(query, view):
    assert from_query(query) == view
