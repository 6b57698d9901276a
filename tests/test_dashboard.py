"""The real page in headless Chromium against the real embedded stack.

The pipeline (embedded broker, producers, store writers) runs as processes; the Dash app runs in
this process through dash_duo, with its live consumer thread. What the browser holds in its
graphs must equal what the store holds for the same window: no loss, no duplicate, no hole.
"""
from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from simple_websocket import Client
from simple_websocket import ConnectionError as SocketError
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Request

from dash_app.app import create_app
from dash_app.charts import CHARTS
from dash_app.live import Pages
from dash_app.services import Services
from pipeline.broker import read_address
from pipeline.schema import TOPICS
from pipeline.store import open_store
from tests.helpers import TRACES, bucket_check, on_each_backend, stop_process, wait_for

BROWSER_POINTS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    id: JSON.parse(gd.closest('.dash-graph').id).id,
    // Series only: no out-of-band markers ("!..."), no null points (a line's break over a hole).
    traces: (gd.data || []).filter(t => !String(t.meta).startsWith('!')).map(t => ({
        meta: t.meta, x: Array.from(t.x || []).filter((_, i) => t.y[i] !== null).map(Number)})),
}));
"""


# dash_duo stops its server by raising SystemExit in the server's threads, open websockets
# included; pytest reports each as an unhandled thread exception. Nothing of ours raised it.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def browser_series(duo) -> dict[tuple[str, str], list[int]]:
    return {(c["id"], t["meta"]): t["x"] for c in duo.driver.execute_script(BROWSER_POINTS) for t in c["traces"]}


def newer_points_everywhere(duo, timeout: float, what: str) -> None:
    """Wait until every trace has a point newer than its newest now (a trace's length may not
    grow: the live window drops its oldest points)."""
    newest = {k: v[-1] for k, v in browser_series(duo).items() if v}
    wait_for(lambda: all((browser_series(duo).get(k) or [0])[-1] > t for k, t in newest.items()), timeout, what)


def assert_browser_equals_store(duo, store) -> int:
    """Every trace holds exactly the stored rows of its series between its first and last point."""
    series = browser_series(duo)
    charts = {c.id: c for c in CHARTS}
    assert {chart for chart, _ in series} == set(charts), "a chart has no traces"
    checked = 0
    for (chart_id, meta), xs in series.items():
        key, field = meta.split("|")
        assert field in charts[chart_id].fields
        assert xs == sorted(set(xs)), f"{chart_id} {meta}: duplicate or out-of-order points"
        spec = TOPICS[charts[chart_id].topic]

        def stored(spec=spec, key=key, xs=xs):
            rows = store.since(spec, xs[0], xs[-1] + 1)
            return rows[rows[spec.key] == key]["ts"].astype("int64").tolist()

        # The writers commit a batch at a time: wait until the store has caught up with the page.
        wait_for(lambda xs=xs: len(stored()) >= len(xs), 15, f"the store to catch up with {meta}")
        assert xs == stored(), f"{chart_id} {meta}: browser and store differ"
        checked += len(xs)
    return checked


@on_each_backend
def test_history_then_live_points_match_the_store_without_loss(dashboard):
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: len(browser_series(duo)) >= len(CHARTS), 20, "history in every chart")
    first = {k: len(v) for k, v in browser_series(duo).items()}
    # 40 live points per trace: 20 s of streaming at 2 readings/s.
    wait_for(lambda: all(len(browser_series(duo).get(k, [])) >= n + 40 for k, n in first.items()), 60, "40 live points in every trace")
    with open_store(services.cfg.store_url, services.cfg.questdb_pg_url) as store:
        checked = assert_browser_equals_store(duo, store)
    assert checked > 300
    # Read in the page: the cards are drawn anew every second, so an element handle can be stale when read.
    cards = duo.driver.execute_script("return [...document.querySelectorAll('.card-value')].map(c => c.textContent)")
    assert len(cards) == 4 + 4 + 3 and all(c not in ("", "–") for c in cards)
    # The cards and the alerts panel are HTML built in the page: text and attributes are escaped.
    built = duo.driver.execute_script("""return window.dash_clientside.markup.tag("p", {title: '"<x>'}, "<b>&")""")
    assert built == '<p title="&quot;&lt;x&gt;">&lt;b&gt;&amp;</p>'
    assert duo.get_logs() == [], "browser console errors"


def test_dropped_websocket_reconnects_from_its_cursor_without_a_hole(dashboard):
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: len(browser_series(duo)) >= len(CHARTS), 20, "history in every chart")
    # The badge may say "reconnecting" for well under a second: record every text it shows.
    duo.driver.execute_script(
        """const badge = document.getElementById('status');
           window.badgeSeen = [];
           new MutationObserver(() => window.badgeSeen.push(badge.textContent))
               .observe(badge, {childList: true, characterData: true, subtree: true});"""
    )
    for _ in range(2):
        duo.driver.execute_script("window.badgeSeen.length = 0")
        dropped = set(services.pages.sockets)
        services.pages.close_all()  # the server hangs up; points keep arriving meanwhile
        wait_for(lambda: "reconnecting" in duo.driver.execute_script("return window.badgeSeen"), 5, "the badge to say reconnecting")
        wait_for(lambda: set(services.pages.sockets) - dropped, 10, "the page to reconnect")  # noqa: B023 - called at once
        duo.wait_for_text_to_equal("#status", "live", timeout=10)
    newer_points_everywhere(duo, 30, "points after the reconnects")
    with open_store(services.cfg.store_url) as store:
        assert_browser_equals_store(duo, store)
    assert duo.get_logs() == [], "browser console errors"


def assert_buckets_exact(duo, services, width: int, start: int, seconds: float) -> dict:
    """Each closed `width` bucket drawn from `start` on, over `seconds` of live buckets, is
    exactly the store's: its last reading on the line, its lowest to highest as the envelope's
    segment. Returns the traces drawn ("<chart> <meta>" -> (xs, ys))."""
    wait_for(lambda: time.time() * 1000 > start + seconds * 1000, seconds + 10, f"{seconds:g} s of live buckets")
    end = int(time.time() * 1000) - 2 * width  # the open bucket is still provisional
    drawn = {key: (xs, ys) for key, xs, ys in duo.driver.execute_script(TRACES)}
    charts = {c.id: c for c in CHARTS}
    series = [k for k in drawn if " !" not in k]  # lines, not envelopes
    with open_store(services.cfg.store_url) as store:
        def stored() -> dict[str, list]:
            out = {}
            for key in series:
                chart_id, meta = key.split(" ")
                sensor, field = meta.split("|")
                spec = TOPICS[charts[chart_id].topic]
                rows = store.since(spec, start, end)
                rows = rows[rows[spec.key] == sensor].sort_values("ts")
                out[key] = list(zip(rows["ts"].astype("datetime64[ms, UTC]").astype("int64"), rows[field].astype(float)))
            return out

        wait_for(lambda: all(v and v[-1][0] >= end - 200 for v in stored().values()), 15, "the store to catch up")
        exact, checked = bucket_check(drawn, stored(), width, start, end)
    assert checked >= 10 * len(series), f"only {checked} buckets checked"
    assert exact == checked, f"{checked - exact} of {checked} buckets differ from the store"
    return drawn


@pytest.mark.parametrize("pipeline", [40], indirect=True)
def test_fast_series_are_drawn_as_each_buckets_last_reading_over_its_envelope(dashboard):
    """At 40 readings/s per sensor a live bucket (LIVE_WINDOW_S / LIVE_BUCKETS = 500 ms) holds ~20
    readings; each closed bucket drawn must be exactly the store's last reading on the line and
    its lowest to highest as the envelope's segment."""
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: len(browser_series(duo)) >= len(CHARTS), 20, "history in every chart")
    # From the second after: the first live bucket may keep points of the history before it.
    drawn = assert_buckets_exact(duo, services, services.cfg.live_bucket_ms, int(time.time() * 1000) + 1000, 8)
    points = max(len(x) for x, _ in drawn.values())
    assert points < 3 * 600 + 2000, "a trace holds more points than its pixel columns can show"


@pytest.fixture
def slow_drawing(stack):
    stack.env["LIVE_DRAW_BUDGET_MS"] = "1"  # no frame is drawn that fast: the page goes coarse
    stack.env["LIVE_WINDOW_S"] = "60"  # the coarsest buckets 800 ms wide: a dozen in 10 s
    return stack


@pytest.mark.parametrize("pipeline", [40], indirect=True)
def test_a_page_that_draws_slowly_draws_coarser_buckets_exactly(slow_drawing, dashboard):
    """A page whose frames take longer to draw than LIVE_DRAW_BUDGET_MS reloads its history in
    fewer, wider buckets and streams in them (Config.live_levels), says so, and each bucket it
    draws is still exactly the store's."""
    duo, services = dashboard
    levels = services.cfg.live_levels
    assert [width for _, width in levels] == [100, 200, 400, 800]
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    cursor = lambda: duo.driver.execute_script("return window.dash_component_api.getLayout('cursor').props.data")
    # Several steps at once (the mean is hundreds of times the budget), after a level's hold.
    wait_for(lambda: cursor()["level"] == len(levels) - 1, 60, "the coarsest resolution")
    duo.wait_for_text_to_equal("#coarse", "drawn in 0.8 s buckets: redraws were slow", timeout=10)
    assert "level=3" in duo.driver.execute_script("return window.dash_component_api.getLayout('ws').props.url")
    duo.wait_for_text_to_equal("#status", "live", timeout=10)
    assert_buckets_exact(duo, services, levels[-1][1], cursor()["load"] // 1_000_000 + 1000, 12)
    assert duo.get_logs() == [], "browser console errors"


@pytest.fixture
def renewing(stack):
    stack.env["BROKER_MAX_MB"] = "1"  # any real broker is bigger: `run all` renews it at every check
    return stack


def test_the_page_follows_a_renewed_broker_without_a_hole(renewing, dashboard):
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: len(browser_series(duo)) >= len(CHARTS), 20, "history in every chart")
    generation = lambda: (read_address(services.cfg) or {}).get("generation", 0)
    wait_for(lambda: generation() >= 2, 60, "two renewals of the embedded broker")
    newer_points_everywhere(duo, 30, "points from the new broker")
    with open_store(services.cfg.store_url) as store:
        assert_browser_equals_store(duo, store)
    assert duo.get_logs() == [], "browser console errors"


def test_page_survives_a_missing_broker_and_store_and_recovers_by_itself(dash_duo, stack, tmp_path):
    """Broker down and store unreachable at start: the page loads, says so, and heals."""
    blocker = tmp_path / "store.db"
    blocker.mkdir()  # a folder where the database file should be: SQLite cannot open it
    stack.env["STORE_URL"] = f"sqlite:///{blocker}"
    services = Services.from_config(stack.config()).start()  # no broker listens on BROKER_PORT yet
    try:
        dash_duo.start_server(create_app(services))
        dash_duo.wait_for_text_to_equal("#status", "broker unreachable", timeout=30)
        assert not services.health.store_ok
        assert dash_duo.find_elements(".js-plotly-plot"), "the page should still draw its (empty) charts"

        with stack.running("pipeline.run", "broker"):
            wait_for(lambda: "listening" in stack.log("pipeline.run-broker"), 20, "the broker")
            with stack.running("pipeline.run", "producer", "temperature", log_name="producer"):
                dash_duo.wait_for_text_to_equal("#status", "store unreachable", timeout=40)
                # Live points still arrive: the charts fill from the stream alone.
                wait_for(lambda: any(len(x) > 3 for x in browser_series(dash_duo).values()), 30, "live points without a store")
                blocker.rmdir()  # the database file can now be created
                dash_duo.wait_for_text_to_equal("#status", "live", timeout=30)
                assert services.health.store_ok
    finally:
        services.stop()


def test_a_longer_range_comes_from_the_store_and_zooming_requeries_it(dashboard):
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    wait_for(lambda: len(browser_series(duo)) >= len(CHARTS), 20, "history in every chart")
    duo.find_element("#range input[value='1h']").click()
    duo.wait_for_text_to_equal("#status", "last 1 h", timeout=10)
    before = browser_series(duo)
    services.feed.ready.wait()
    head = services.ring.head
    wait_for(lambda: services.ring.head > head + 20, 10, "live points arriving meanwhile")
    assert browser_series(duo) == before, "outside live mode the charts are not streamed into"
    with open_store(services.cfg.store_url) as store:
        rows = store.since(TOPICS["temperature"], 0)
    kitchen = before[("temperature", "kitchen|value")]
    stored = rows[rows.room == "kitchen"].ts.astype("int64").tolist()
    assert kitchen == [x for x in stored if x <= kitchen[-1]]  # raw rows: they fit in 2,000 points

    # Zoom into the middle third of the temperature chart: the server re-reads just that span.
    lo, hi = kitchen[len(kitchen) // 3], kitchen[2 * len(kitchen) // 3]
    duo.driver.execute_script(
        """const gd = document.getElementById(arguments[0]).querySelector('.js-plotly-plot');
           Plotly.relayout(gd, {'xaxis.range': [new Date(arguments[1]).toISOString().replace('T', ' ').replace('Z', ''),
                                                new Date(arguments[2]).toISOString().replace('T', ' ').replace('Z', '')]});""",
        json.dumps({"id": "temperature", "type": "chart"}, separators=(",", ":")), lo, hi,
    )
    wait_for(lambda: browser_series(duo)[("temperature", "kitchen|value")] == [x for x in kitchen if lo <= x < hi], 10, "the zoomed re-query")
    for choice, badge in (("live", "live"), ("24h", "last 24 h"), ("live", "live")):
        duo.find_element(f"#range input[value='{choice}']").click()
        duo.wait_for_text_to_equal("#status", badge, timeout=15)
    newer_points_everywhere(duo, 30, "live points after the switches")
    assert duo.get_logs() == [], "browser console errors across range switches"


def refusal(url: str) -> tuple[int, str]:
    """The close code and reason a live socket is refused with, read with wsproto itself:
    simple_websocket's Client takes only the handshake from its first read, so a close frame
    that came in the same segment (a loaded machine) was lost, and it reported 1005."""
    parts = urlsplit(url)
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(ws.send(Request(host=parts.netloc, target=parts.path)))
        while True:
            data = sock.recv(4096)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    return event.code, event.reason
            assert data, "the socket closed without a close frame"


def test_live_sockets_are_bounded_same_origin_and_known_hosts_only(dash_thread_server, stack):
    stack.env["LIVE_MAX_PAGES"] = "1"
    services = Services.from_config(stack.config())  # no live feed: frames are heartbeats
    try:
        dash_thread_server(create_app(services))
        url = dash_thread_server.url.replace("http://", "ws://").rstrip("/") + "/ws/live"
        first = Client.connect(url, headers={"Origin": dash_thread_server.url.rstrip("/")})
        assert json.loads(first.receive(5))["n"] == 0
        code, reason = refusal(url)
        assert code == Pages.BUSY and "LIVE_MAX_PAGES" in reason
        first.close()
        wait_for(lambda: not services.pages.sockets, 5, "the first page to leave")
        third = Client.connect(url)
        assert json.loads(third.receive(5))["n"] == 0
        third.close()
        with pytest.raises(SocketError):
            Client.connect(url, headers={"Origin": "http://elsewhere.example"})
        # A name the dashboard does not go by (DNS rebinding) gets nothing at all.
        port = urlsplit(dash_thread_server.url).port
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": f"rebound.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused_host:
            urllib.request.urlopen(request, timeout=5)
        assert refused_host.value.code == 403
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    finally:
        services.stop()


def test_a_restarted_dashboard_gets_an_open_page_live_again_within_seconds(dash_duo, pipeline):
    """`python -m dash_app` (gunicorn) killed outright and started again: the open page notices,
    reconnects, finds the old cursor gone, reloads its history and streams again."""
    url = f"http://127.0.0.1:{pipeline.env['DASH_PORT']}/"

    def serving() -> bool:
        try:
            return urllib.request.urlopen(url, timeout=1).status == 200
        except OSError:
            return False

    first = pipeline.spawn("dash_app", log_name="dashboard")
    try:
        wait_for(serving, 60, "the dashboard")
        dash_duo.driver.get(url)
        dash_duo.wait_for_text_to_equal("#status", "live", timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait()
        dash_duo.wait_for_text_to_equal("#status", "reconnecting", timeout=10)
        restarted = time.monotonic()
        second = pipeline.spawn("dash_app", log_name="dashboard")
    finally:
        stop_process(first)
    try:
        dash_duo.wait_for_text_to_equal("#status", "live", timeout=30)
        newer_points_everywhere(dash_duo, 30, "new points")
        recovery = time.monotonic() - restarted
        print(f"live again {recovery:.1f} s after the restart")
        assert recovery < 15
        with open_store(pipeline.store_url) as store:
            assert_browser_equals_store(dash_duo, store)
        # While no server listened, each reconnect attempt was refused: the browser itself logs those.
        errors = [e for e in dash_duo.get_logs() if "ERR_CONNECTION_REFUSED" not in e["message"]]
        assert errors == [], "browser console errors"
    finally:
        assert stop_process(second) == 0
