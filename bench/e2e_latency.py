"""End to end, as a person sees it: a reading's event time -> the first animation frame that draws it.

    python -m bench.e2e_latency                        # rates 1, 10, 100, 500 and 1000:8:6, 60 s each
    python -m bench.e2e_latency --quick                # rates 1 and 100, 20 s each
    python -m bench.e2e_latency --rates 100 --pages websocket

Each rate runs the whole product, `python -m pipeline.run all --rate R [--rooms N --devices M]`
(embedded broker, producers, store writers, the dashboard; with `--backend kafka+questdb`, on
Apache Kafka and QuestDB from pipeline.servers instead), and opens its real page in headless
Chromium: every chart, every trace. A hook on each chart's `plotly_afterplot` event notes, at the
next animation frame, every point that the redraw added. A reading counts as shown at the first
frame in which its series' line reaches its event time (the point itself, or a point after it
when the chart draws buckets). Latency = that frame's time - the reading's `ts` (one clock: one
machine). Readings are the store's rows for the measured window, once the writers have caught up.

The stack's live window is `--window` seconds (60), and measuring starts once it is full: the
store is empty when a run starts, and a chart's cost per redraw grows with its points until the
window is full (LIVE_BUCKETS a series, the same at any window width).

Rates are per sensor; `RATE:ROOMS:DEVICES` also sets the sensors: readings/s in total =
RATE x (2 x ROOMS + DEVICES). RATE is at most 1000 (`ts` is in milliseconds), so the top rate,
22,000 readings/s, uses 8 rooms and 6 devices.

The same is measured on a page that polls a server callback with dcc.Interval every 500 ms
(bench/polling_app.py, all four charts, raw points by extendData): the baseline to beat.
Also printed: the input delay (how late a 50 ms timer fires on the page's main thread: how long
a click waits), the dashboard's own consumer lag as its /pipeline page shows it (sampled every
2 s), delivered share, the bucket width the page ended at (it draws coarser buckets where its
redraws are slow: LIVE_DRAW_BUDGET_MS), the share of closed buckets drawn exactly as the store
holds them at that width (the last reading on the line, lowest to highest as the envelope's segment), stored/expected readings (did the writers keep up), and the CPU of the
browser, the dashboard and the broker.
"""
from __future__ import annotations

import argparse
import bisect
import json
import time
import urllib.request
from collections import defaultdict

import psutil
from selenium.common.exceptions import TimeoutException, WebDriverException

from bench.common import Servers, percentile, print_table, temporary_stack, write_result
from dash_app.charts import CHARTS
from pipeline.schema import TOPICS
from tests.helpers import TRACES, browser, bucket_check, wait_for

# Notes, at the first animation frame after each redraw, the points it added to each trace.
HOOK = """
window.__shown = [];
const seen = {};
function note(gd, chart) {
  requestAnimationFrame(() => {
    const now = performance.timeOrigin + performance.now();
    for (const trace of gd.data) {
      const key = chart + " " + trace.meta, xs = trace.x, last = seen[key];
      if (!xs.length) continue;
      if (last !== undefined) {
        let i = xs.length;
        while (i > 0 && xs[i - 1] > last) i--;
        for (let j = i; j < xs.length; j++) window.__shown.push([key, xs[j], now]);
      }
      if (last === undefined || xs[xs.length - 1] > last) seen[key] = xs[xs.length - 1];
    }
  });
}
for (const gd of document.querySelectorAll(".js-plotly-plot")) {
  const chart = JSON.parse(gd.closest(".dash-graph").id).id;
  note(gd, chart);
  gd.on("plotly_afterplot", () => note(gd, chart));
}
"""
# Input delay: how late a 50 ms timer fires on the page's main thread, i.e. how long a click waits.
PROBE = """
window.__late = [];
let due = performance.now() + 50;
setInterval(() => { const now = performance.now(); window.__late.push(Math.max(0, now - due)); due = now + 50; }, 50);
"""
TAKE = "const out = [window.__shown, window.__late]; window.__shown = []; window.__late = []; return out;"


def take(driver, wait: float = 0) -> tuple[list, list]:
    """The hook's records so far and the input delays (ms). A page too busy to answer a script
    in time (the top rates) keeps them for the next call; `wait` > 0 insists for that long (the
    last call)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return tuple(driver.execute_script(TAKE))
        except TimeoutException:
            if time.monotonic() > deadline:
                return [], []


def dashboard_lag(base_url: str) -> int | None:
    """The dashboard's own consumer lag (messages), as its /pipeline page shows it: the newest
    point of its group's line in the lag chart (the last element of the page's view). The feed
    reads in a new group after each renewal of the embedded broker: the line that goes furthest
    is the current group's."""
    from dash_app.pipeline_page import VIEW_PATH

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + VIEW_PATH, timeout=5) as answer:
            figure = json.loads(answer.read())[-1]
    except (OSError, ValueError):
        return None
    lines = [t for t in figure.get("data", []) if str(t.get("name", "")).startswith("dashboard-") and t.get("y")]
    return max(lines, key=lambda t: t["x"][-1])["y"][-1] if lines else None


def parse_rate(text: str) -> tuple[float, int, int]:
    rate, rooms, devices = (text.split(":") + ["4", "3"])[:3] if ":" in text else (text, "4", "3")
    return float(rate), int(rooms), int(devices)


class CpuMeter:
    """CPU seconds per kind of process over a window, counting processes that start (a renewed
    broker) or end during it: each process counts from its first sample to its last."""

    def __init__(self, find):
        self.find = find  # () -> {kind: [psutil.Process]}
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.sample(start=True)

    def sample(self, start: bool = False) -> None:
        for kind, family in self.find().items():
            for p in family:
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                key = (kind, p.pid)
                self.first.setdefault(key, t.user + t.system if start else 0.0)
                self.last[key] = t.user + t.system

    def cores(self, seconds: float) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for key, value in self.last.items():
            out[key[0]] += (value - self.first[key]) / seconds
        return out


def processes(run_all: int, driver, dashboard: int | None, broker: int | None) -> dict[str, list[psutil.Process]]:
    """The browser, the dashboard (run all's, or the polling page's) and the broker (`broker`, else
    run all's embedded one), with children."""
    def family(p: psutil.Process) -> list[psutil.Process]:
        return [p, *p.children(recursive=True)]

    def running(p: psutil.Process, name: str) -> bool:
        try:
            return name in " ".join(p.cmdline())
        except psutil.Error:  # ended meanwhile (a zombie until its parent reaps it)
            return False

    kids = psutil.Process(run_all).children(recursive=True)
    return {
        "browser": family(psutil.Process(driver.service.process.pid)),
        "dashboard": family(psutil.Process(dashboard)) if dashboard else [p for p in kids if running(p, "dash_app")],
        "broker": [psutil.Process(broker)] if broker else [p for p in kids if running(p, "tansu")],
    }


def stored_series(stack, t0: int, t1: int) -> dict[str, list[tuple[int, float]]]:
    """chart-trace key -> [(ts, value)] of the stored readings in [t0, t1), in time order."""
    out: dict[str, list[tuple[int, float]]] = {}
    with stack.open_store() as store:
        for chart in CHARTS:
            spec = TOPICS[chart.topic]
            rows = store.since(spec, t0, t1)
            rows["ms"] = rows["ts"].astype("datetime64[ms, UTC]").astype("int64")
            for key, group in rows.sort_values("ms").groupby(spec.key):
                for field in chart.fields:
                    out[f"{chart.id} {key}|{field}"] = list(zip(group["ms"].tolist(), group[field].astype(float).tolist()))
    return out


def measure(page: str, rate: tuple[float, int, int], duration: float, warmup: float, window: int, servers: Servers) -> dict:
    per_sensor, rooms, devices = rate
    sensors = 2 * rooms + devices
    servers.reset()
    with temporary_stack(PARTITIONS="3", LIVE_WINDOW_S=str(window), **servers.settings) as stack:
        run_all = stack.spawn(
            "pipeline.run", "all", "--rate", str(per_sensor), "--rooms", str(rooms), "--devices", str(devices),
            *(["--no-dashboard"] if page == "polling" else []), log_name="all",
        )
        polling = stack.spawn("bench.polling_app", log_name="polling") if page == "polling" else None
        url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 90, "the dashboard", ignore=(OSError,))
        cfg = stack.config()
        with stack.open_store() as store:
            store.ensure_tables()
            wait_for(lambda: all(store.count(s) > 0 for s in TOPICS.values()), 60, "rows in every table")
        driver = browser()
        try:
            driver.get(url)
            wait_for(lambda: driver.find_element("id", "status").text == "live", 60, "the page to go live", ignore=(WebDriverException,))
            wait_for(lambda: driver.execute_script(
                "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length") >= len(CHARTS), 30, "traces")
            loaded = int(time.time() * 1000)
            driver.execute_script(HOOK + PROBE)
            time.sleep(warmup)
            driver.execute_script(TAKE)
            meter = CpuMeter(lambda: processes(run_all.pid, driver, polling.pid if polling else None, servers.broker_pid))
            t0 = int(time.time() * 1000)
            records: list = []
            delays: list = []
            lags: list = []
            while time.time() * 1000 < t0 + duration * 1000:
                time.sleep(2)
                shown, late = take(driver)
                records += shown
                delays += late
                meter.sample()
                if page == "websocket" and (lag := dashboard_lag(url)) is not None:
                    lags.append(lag)
            t1 = int(time.time() * 1000)
            time.sleep(3)  # readings from just before t1 still travelling
            records += take(driver, wait=60)[0]
            drawn = {key: (xs, ys) for key, xs, ys in driver.execute_script(TRACES)}
            # The resolution the page ended at (it draws coarser where drawing is slow), and when
            # it last loaded history: buckets from then on are the live stream's.
            level, loaded_last = driver.execute_script(
                "const c = window.dash_component_api.getLayout('cursor').props.data; return [c.level, c.load];",
            ) if page == "websocket" else (0, 0)
        finally:
            driver.quit()
        # The writers have caught up when the stored count stops moving.
        counts: list[int] = []
        while len(counts) < 3 or len(set(counts[-3:])) > 1:
            counts.append(sum(len(v) for v in stored_series(stack, t0, t1).values()))
            time.sleep(1)
        stored = stored_series(stack, t0, t1)
    shown: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for key, x, at in sorted(records, key=lambda r: (r[0], r[1])):
        shown[key][0].append(x)
        shown[key][1].append(at)
    latencies, missing = [], 0
    for key, readings in stored.items():
        xs, ats = shown.get(key, ([], []))
        first_at = list(ats)
        for i in range(len(first_at) - 2, -1, -1):  # earliest frame that reached x or beyond
            first_at[i] = min(first_at[i], first_at[i + 1])
        for ts, _ in readings:
            i = bisect.bisect_left(xs, ts)
            if i == len(xs):
                missing += 1
            else:
                latencies.append((ts, first_at[i] - ts))
    latencies.sort()
    values = [lat for _, lat in latencies]
    third = max(1, len(values) // 3)
    width = cfg.live_levels[level][1]
    # From t0: the store's readings are those from t0 on, so a bucket that began before holds only part of its own.
    exact, checked = bucket_check(drawn, stored, width, max(t0, max(loaded, loaded_last // 1_000_000) + 5000), t1 - 2000)
    expected = sensors * per_sensor * (t1 - t0) / 1000
    seconds = (t1 - t0) / 1000
    cpu = meter.cores(seconds)
    return {
        "page": page, "rate": per_sensor, "rooms": rooms, "devices": devices, "readings_per_s": sensors * per_sensor,
        "points": len(values) + missing, "delivered_pct": 100.0 * len(values) / max(1, len(values) + missing),
        "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99),
        "max_ms": max(values, default=float("nan")),
        "p50_first_third_ms": percentile(values[:third], 50), "p50_last_third_ms": percentile(values[-third:], 50),
        "buckets_exact_pct": 100.0 * exact / checked if checked else None, "buckets_checked": checked, "bucket_ms": width,
        "stored_pct": 100.0 * sum(len(v) for k, v in stored.items() if k.startswith(("temperature ", "humidity ", "cpu "))) / expected,
        "cpu_browser": cpu["browser"], "cpu_dashboard": cpu["dashboard"], "cpu_broker": cpu["broker"],
        "input_delay_p50_ms": percentile(delays, 50), "input_delay_p99_ms": percentile(delays, 99),
        "input_delay_max_ms": max(delays, default=float("nan")),
        "dashboard_lag_median": percentile(lags, 50) if lags else None, "dashboard_lag_max": max(lags, default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1,10,100,500,1000:8:6", help="RATE or RATE:ROOMS:DEVICES, comma-separated")
    parser.add_argument("--duration", type=float, default=60, help="seconds measured per rate and page")
    parser.add_argument("--warmup", type=float, default=10,
                        help="seconds after the page is live before measuring; at least --window, so the live window is full")
    parser.add_argument("--window", type=int, default=60,
                        help="LIVE_WINDOW_S of the measured stack: a chart holds as many points once it is full as at the default "
                             "300 s (LIVE_BUCKETS a series), and it fills in this time")
    parser.add_argument("--pages", default="websocket,polling", help="websocket (the product's page), polling (the baseline)")
    parser.add_argument("--quick", action="store_true", help="rates 1 and 100, 20 s each")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "kafka+questdb"],
                        help="sqlite: the embedded broker and SQLite (default); kafka+questdb: Apache Kafka and QuestDB (pipeline.servers)")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.duration = "1,100", 20
    results = []
    with Servers(args.backend) as servers:
        for text in args.rates.split(","):
            for page in args.pages.split(","):
                print(f"{page} page at --rate {text} for {args.duration:.0f}s ...", flush=True)
                results.append(measure(page, parse_rate(text), args.duration, max(args.warmup, args.window), args.window, servers))
                r = results[-1]
                print(f"  p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, delivered {r['delivered_pct']:.1f} %", flush=True)
    headers = ["page", "readings/s", "delivered %", "p50 ms", "p95 ms", "p99 ms", "max ms", "p50 1st/last third",
               "input delay p50/p99/max ms", "dashboard lag median/max", "bucket ms", "buckets exact %", "stored %", "CPU browser", "CPU dashboard", "CPU broker"]
    rows = [
        [r["page"], r["readings_per_s"], r["delivered_pct"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"],
         f"{r['p50_first_third_ms']:.0f} / {r['p50_last_third_ms']:.0f}",
         f"{r['input_delay_p50_ms']:.0f} / {r['input_delay_p99_ms']:.0f} / {r['input_delay_max_ms']:.0f}",
         "-" if r["dashboard_lag_median"] is None else f"{r['dashboard_lag_median']:,.0f} / {r['dashboard_lag_max']:,}",
         r["bucket_ms"], r["buckets_exact_pct"], r["stored_pct"], r["cpu_browser"], r["cpu_dashboard"], r["cpu_broker"]]
        for r in results
    ]
    print_table(headers, rows, title="Event time -> first animation frame that draws the reading, real page of `run all`")
    ratios = {}
    for w in (r for r in results if r["page"] == "websocket"):
        p = next((r for r in results if r["page"] == "polling" and r["readings_per_s"] == w["readings_per_s"]), None)
        if p and w["p50_ms"]:
            ratios[str(w["readings_per_s"])] = p["p50_ms"] / w["p50_ms"]
    if ratios:
        print("\npolling p50 / websocket p50: " + ", ".join(f"{k} readings/s: {v:.1f}x" for k, v in ratios.items()))
    write_result("e2e_latency", {"runs": results, "polling_over_websocket_p50": ratios}, vars(args))


if __name__ == "__main__":
    main()
