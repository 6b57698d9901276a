"""End-to-end latency: a reading's event time at the producer -> the point in the browser's graph.

    python -m bench.e2e_latency                     # 100, 1,000, 5,000 points/s, 30 s each
    python -m bench.e2e_latency --quick             # 100 and 1,000 points/s, 10 s each

For each rate it runs the embedded broker, the real temperature producer (ROOMS rooms at
rate/ROOMS readings per second each), a store writer, and the dashboard as a process; headless
Chromium loads the page and a hook on Plotly.extendTraces notes when each point enters the graph
data (the same clock as the producer: one machine). Delivered share = distinct points the browser
got / rows the store holds for the same event-time window. The same run is repeated against a
page that polls with dcc.Interval every 500 ms (bench/polling_app.py): the baseline.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request

from bench.common import Stack, free_port, percentile, print_table, write_result
from pipeline.schema import TOPICS
from pipeline.store import open_store

HOOK = """
window.__lat = [];
const original = Plotly.extendTraces;
Plotly.extendTraces = function (gd, update, indices) {
    const now = performance.timeOrigin + performance.now();
    indices.forEach((i, j) => {
        const meta = gd.data[i].meta;
        for (const x of update.x[j]) window.__lat.push([meta, x, now]);
    });
    return original.apply(this, arguments);
};
"""
TAKE = "const out = window.__lat; window.__lat = []; return out;"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options)


def wait(predicate, timeout: float, what: str) -> None:
    """Poll until predicate() holds; an exception (e.g. the page not rendered yet) counts as no."""
    def holds() -> bool:
        try:
            return bool(predicate())
        except Exception:  # noqa: BLE001
            return False

    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_once(mode: str, rate: int, rooms: int, duration: float, warmup: float) -> dict:
    """One page (websocket or polling) at one rate: latency percentiles and delivered share."""
    spec = TOPICS["temperature"]
    with Stack(DASH_PORT=str(free_port()), ROOMS=str(rooms), RATE=str(rate / rooms)) as stack, stack.broker():
        stack.spawn("pipeline.run", "consumer", "temperature", log_name="writer")
        module = "dash_app" if mode == "websocket" else "bench.polling_app"
        stack.spawn(module, log_name="dashboard")
        url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/"

        def up() -> bool:
            try:
                return urllib.request.urlopen(url, timeout=1).status == 200
            except OSError:
                return False

        wait(up, 60, "the dashboard")
        producer = stack.spawn("pipeline.run", "producer", "temperature", log_name="producer")
        driver = browser()
        try:
            time.sleep(1.5)  # every room has produced a reading, so the page loads all traces
            driver.get(url)
            wait(lambda: driver.find_element("id", "status").text == "live", 60, "the page to go live")
            wait(lambda: driver.execute_script(
                "const gd = document.querySelector('.js-plotly-plot'); return gd && gd.data && gd.data.length") >= rooms, 30, "all traces")
            driver.execute_script(HOOK)
            time.sleep(warmup)
            driver.execute_script(TAKE)
            t0 = time.time() * 1000
            records = []
            while time.time() * 1000 < t0 + duration * 1000:
                time.sleep(1)
                records += driver.execute_script(TAKE)
            t1 = time.time() * 1000
            time.sleep(2)  # points produced just before t1 still travelling
            records += driver.execute_script(TAKE)
        finally:
            driver.quit()
            stack.procs.remove(producer)
            from bench.common import stop

            stop(producer)
        with open_store(stack.store_url) as store:
            def stored() -> int:
                return len(store.since(spec, int(t0), int(t1)))

            last, same = -1, 0
            while same < 3:  # the writer has caught up when the count stops moving
                n = stored()
                same = same + 1 if n == last else 0
                last = n
                time.sleep(0.5)
    window = [(m, x, seen) for m, x, seen in records if t0 <= x < t1]
    latencies = [seen - x for _, x, seen in window]
    delivered = len({(m, x) for m, x, _ in window})
    third = len(latencies) // 3
    return {
        "rate": rate, "points": last, "delivered": delivered, "delivered_pct": 100.0 * delivered / last if last else 0.0,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
        "p50_first_third_ms": percentile(latencies[:third], 50), "p50_last_third_ms": percentile(latencies[-third:], 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,1000,5000", help="total points/s, comma-separated")
    parser.add_argument("--duration", type=float, default=30, help="seconds measured per rate")
    parser.add_argument("--rooms", type=int, default=10, help="traces on the chart")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--modes", default="websocket,polling")
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 points/s, 10 s each")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.duration = "100,1000", 10
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[str, list[dict]] = {}
    for mode in args.modes.split(","):
        results[mode] = []
        for rate in rates:
            print(f"{mode} at {rate} points/s for {args.duration:.0f}s ...", flush=True)
            results[mode].append(run_once(mode, rate, args.rooms, args.duration, args.warmup))
    headers = ["page", "points/s", "points", "delivered %", "p50 ms", "p95 ms", "p99 ms", "p50 first/last third"]
    rows = [
        [mode, r["rate"], r["points"], r["delivered_pct"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
         f"{r['p50_first_third_ms']:.0f} / {r['p50_last_third_ms']:.0f}"]
        for mode, rs in results.items() for r in rs
    ]
    print_table(headers, rows, title="End-to-end latency: producer event time -> point in the browser's graph data")
    metrics: dict = {mode: {str(r["rate"]): r for r in rs} for mode, rs in results.items()}
    if "websocket" in results and "polling" in results:
        metrics["polling_over_websocket_p50"] = {
            str(w["rate"]): (p["p50_ms"] / w["p50_ms"] if w["p50_ms"] else None) for w, p in zip(results["websocket"], results["polling"])
        }
        print("\npolling p50 / websocket p50: " + ", ".join(f"{k} pts/s: {v:.1f}x" for k, v in metrics["polling_over_websocket_p50"].items() if v))
    write_result("e2e_latency", metrics, vars(args))


if __name__ == "__main__":
    main()
