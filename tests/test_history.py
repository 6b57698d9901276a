"""History a person can trust, in headless Chromium against the real stack (see test_dashboard.py).

`run all --no-dashboard` runs as processes; the Dash app runs in this process through dash_duo.
Where a test needs history it writes rows straight into the store, for a room the simulated
producers do not have ("cellar"), and opens the page on a URL naming the range.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from confluent_kafka import Producer

from dash_app import history
from dash_app.figures import OUTSIDE_ID
from dash_app.graphs import _axis_ms
from pipeline.broker import current_address
from pipeline.schema import TOPICS, Temperature
from pipeline.store import open_store
from tests.helpers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

TEMP = TOPICS["temperature"]
ROOM = "cellar"
HOUR = 3_600_000

# Points as Plotly holds them after decoding (_fullData): a trace sent as a typed array (an
# envelope) stays an encoded object in gd.data. NaN, a typed array's gap, reads as null.
TRACE = """
const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
    .find(g => JSON.parse(g.closest('.dash-graph').id).id === arguments[0]);
if (!gd || !gd.data || !gd._fullData) return null;
const t = gd._fullData.find(t => t.meta === arguments[1]);
const values = (a) => Array.from(a, (v) => (Number.isNaN(v) ? null : v));
return {range: gd.layout.xaxis.range, traces: gd.data.length,
        notes: (gd.layout.annotations || []).map(a => a.text),
        x: t ? values(t.x) : null, y: t ? values(t.y) : null};
"""


HOVER = """
const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
    .find(g => JSON.parse(g.closest('.dash-graph').id).id === arguments[0]);
const i = gd.data.findIndex(t => t.meta === arguments[1]);
Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: Array.from(gd.data[i].x).indexOf(arguments[2])}]);
return gd.querySelector('.hoverlayer').textContent;
"""


FILL_SHAPES = """
const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
    .find(g => JSON.parse(g.closest('.dash-graph').id).id === arguments[0]);
const trace = Array.from(gd.querySelectorAll('.scatterlayer .trace')).find(n => n.__data__[0].trace.meta === arguments[1]);
return (trace.querySelector('.js-fill').getAttribute('d').match(/M/g) || []).length;
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def write_cellar(store_url: str, stamps: list[int], value: float = 12.0) -> None:
    with open_store(store_url) as store:
        store.write(TEMP, [Temperature(ts=t, room=ROOM, value=value, unit="°C") for t in stamps], now_ms())


def chart(duo, chart_id: str, meta: str = f"{ROOM}|value") -> dict | None:
    return duo.driver.execute_script(TRACE, chart_id, meta)


def open_view(duo, query: str) -> None:
    duo.driver.get(duo.server_url + "/" + query)


def test_a_two_hour_hole_is_a_break_in_the_line(dashboard):
    duo, services = dashboard
    now = now_ms() // 10_000 * 10_000
    before = list(range(now - 6 * HOUR, now - 4 * HOUR, 10_000))
    after = list(range(now - 2 * HOUR, now - 600_000, 10_000))
    write_cellar(services.cfg.store_url, before + after)
    open_view(duo, "?range=24h")
    duo.wait_for_text_to_equal("#status", "last 24 h", timeout=30)
    drawn = wait_for(lambda: (c := chart(duo, "temperature")) and c["x"] and c, 20, "the cellar's trace")
    xs, ys = drawn["x"], drawn["y"]
    holes = [(xs[i - 1], xs[i + 1]) for i, y in enumerate(ys) if y is None]
    assert holes == [(before[-1], after[0])], "one break, exactly over the two-hour hole"
    assert [x for x, y in zip(xs, ys) if y is not None] == before + after
    assert duo.get_logs() == [], "browser console errors"


def test_a_stored_spike_survives_on_the_24h_and_7d_views(dashboard):
    """One 95 °C reading among 20 °C ones over 23 h: the bucket means flatten it, the envelope keeps it."""
    duo, services = dashboard
    now = now_ms() // 10_000 * 10_000
    # ~7,100 readings (downsampled on both views), with a 3-hour hole that breaks the envelope.
    stamps = [t for t in range(now - 23 * HOUR, now - 600_000, 10_000) if not now - 8 * HOUR <= t < now - 5 * HOUR]
    spike = stamps[len(stamps) // 4]
    write_cellar(services.cfg.store_url, [t for t in stamps if t != spike], value=20.0)
    write_cellar(services.cfg.store_url, [spike], value=95.0)
    for view, status in (("24h", "last 24 h"), ("7d", "last 7 d")):
        open_view(duo, f"?range={view}")
        duo.wait_for_text_to_equal("#status", status, timeout=30)
        band = wait_for(lambda: (c := chart(duo, "temperature", f"!envelope|{ROOM}|value")) and c["y"] and c, 20, f"the {view} envelope")
        line = chart(duo, "temperature")
        assert max(y for y in line["y"] if y is not None) < 95.0, f"{view}: the mean flattens the spike"
        top = max(y for y in band["y"] if y is not None)
        assert top == 95.0, f"{view}: the envelope's upper edge reaches the spike"
        bucket = min(x for x, y in zip(band["x"], band["y"]) if y == top)
        assert spike - 600_000 < bucket <= spike, f"{view}: at the spike's bucket"
        hover = duo.driver.execute_script(HOVER, "temperature", f"{ROOM}|value", bucket)
        assert "min 20" in hover and "max 95" in hover, f"{view}: the line's hover gives the bucket's min and max: {hover!r}"
        assert band["y"].count(None) == 1, f"{view}: one gap, over the hole"
        assert duo.driver.execute_script(FILL_SHAPES, "temperature", f"!envelope|{ROOM}|value") == 2, f"{view}: drawn as two shapes"
        marks = chart(duo, "temperature", "!outside band")
        assert 95.0 in marks["y"], f"{view}: the spike is marked outside the comfort band"
    assert duo.get_logs() == [], "browser console errors"


def test_an_empty_range_shows_its_span_and_says_so(dashboard):
    duo, _ = dashboard
    open_view(duo, "?range=custom&from=2001-01-01&to=2001-01-02")
    duo.wait_for_text_to_equal("#status", "2001-01-01 to 2001-01-02", timeout=30)
    for chart_id in ("temperature", "humidity", "cpu", "memory"):
        shown = wait_for(lambda c=chart_id: (d := chart(duo, c)) and d["notes"] and d, 20, f"the {chart_id} chart")
        assert shown["traces"] == 0
        assert "no data in this range" in shown["notes"]
        assert [_axis_ms(x) for x in shown["range"]] == [978_307_200_000, 978_307_200_000 + 2 * 86_400_000]
    assert duo.get_logs() == [], "browser console errors"


def test_a_stale_sensors_card_turns_stale_and_recovers(dashboard):
    duo, services = dashboard
    stored_ts = now_ms() - 60_000
    write_cellar(services.cfg.store_url, [stored_ts])
    open_view(duo, "")
    duo.wait_for_text_to_equal("#status", "live", timeout=30)

    def card() -> tuple[str, str]:
        """The cellar's card's class and text, read in the page: the cards are drawn anew every
        second, so an element handle can be stale when read."""
        script = "const c = document.querySelector(arguments[0]); return c ? [c.className, c.innerText] : ['', '']"
        return tuple(duo.driver.execute_script(script, f'.card[data-sensor="temperature|{ROOM}"]'))

    wait_for(lambda: "card-stale" in card()[0], 15, "the cellar's card to be stale")
    assert re.search(r"stale · last seen \d+ min ago", card()[1])
    duo.wait_for_text_to_equal("#stale-count", "1 stale", timeout=5)

    producer = Producer({"bootstrap.servers": current_address(services.cfg)})
    reading = {"ts": now_ms(), "room": ROOM, "value": 12.5, "unit": "°C"}
    producer.produce("temperature", key=ROOM.encode(), value=json.dumps(reading).encode())
    assert producer.flush(10) == 0
    wait_for(lambda: "card-stale" not in card()[0], 15, "the card to recover")
    assert "last seen" not in card()[1]
    duo.wait_for_text_to_equal("#stale-count", "", timeout=5)
    # The live point came a minute after the stored one: the live trace breaks over the hole.
    drawn = wait_for(lambda: (c := chart(duo, "temperature")) and c["x"] and len(c["x"]) >= 3 and c, 10, "the live point")
    assert drawn["y"] == [12.0, None, 12.5] and drawn["x"][2] == reading["ts"]
    # Both readings are below the comfort band: the stored one marked by the history load, the
    # live one by the stream, once each however many frames carry it.
    marks = wait_for(lambda: (c := chart(duo, "temperature", OUTSIDE_ID)) and len(c["x"]) >= 2 and c, 10, "the live point marked")
    assert sorted(zip(marks["x"], marks["y"])) == [(stored_ts, 12.0), (reading["ts"], 12.5)]
    # Silent again: stale again once its intervals (at least 10 s) have passed.
    wait_for(lambda: "card-stale" in card()[0], 20, "the card to turn stale again")
    assert duo.get_logs() == [], "browser console errors"


def test_a_charts_csv_equals_what_the_store_returns_for_its_range(dashboard, tmp_path):
    duo, services = dashboard
    now = now_ms()
    write_cellar(services.cfg.store_url, list(range(now - 50 * 60_000, now - 60_000, 5000)))
    downloads = Path(tmp_path / "downloads")
    downloads.mkdir()
    duo.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    open_view(duo, "?range=1h")
    duo.wait_for_text_to_equal("#status", "last 1 h", timeout=30)
    shown = wait_for(lambda: (c := chart(duo, "temperature")) and c["x"] and c, 20, "the temperature chart")
    start, end = (_axis_ms(x) for x in shown["range"])
    duo.find_element('[id=\'{"id":"temperature","type":"export"}\']').click()
    files = wait_for(lambda: [p for p in downloads.glob("*.csv")], 15, "the CSV download")
    assert files[0].name.startswith("temperature_1h_")
    got = pd.read_csv(files[0])
    got["ts"] = pd.to_datetime(got["ts"]).astype("datetime64[ms, UTC]").astype("int64")
    with open_store(services.cfg.store_url) as store:
        want = history.topic_range(store, TEMP, start, end, services.cfg.live_max_points)
    assert len(got) > 500
    assert got["ts"].tolist() == want["ts"].tolist()
    assert got["room"].tolist() == want["room"].tolist()
    assert got["value"].tolist() == pytest.approx(want["value"].tolist())
    assert duo.get_logs() == [], "browser console errors"


def test_a_url_with_a_range_opens_that_range_and_back_returns_to_it(dashboard):
    duo, _ = dashboard
    open_view(duo, "?range=24h")
    duo.wait_for_text_to_equal("#status", "last 24 h", timeout=30)
    assert duo.find_element("#range input[value='24h']").is_selected()
    duo.find_element("#range input[value='1h']").click()
    duo.wait_for_text_to_equal("#status", "last 1 h", timeout=20)
    wait_for(lambda: duo.driver.execute_script("return window.location.search") == "?range=1h", 5, "the URL to follow")
    duo.driver.back()
    wait_for(lambda: duo.driver.execute_script("return window.location.search") == "?range=24h", 5, "the URL to go back")
    duo.wait_for_text_to_equal("#status", "last 24 h", timeout=20)
    assert duo.find_element("#range input[value='24h']").is_selected()
    open_view(duo, "?range=custom&from=2026-11-20&to=2026-11-22")
    duo.wait_for_text_to_equal("#status", "2026-11-20 to 2026-11-22", timeout=20)
    assert duo.get_logs() == [], "browser console errors"
