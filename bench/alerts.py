"""Alerts: how soon a firing shows on the page, and whether the alerter keeps up at 22,000 readings/s.

    python -m bench.alerts                 # both parts, 90 s of spikes, 60 s at 22,000 readings/s
    python -m bench.alerts --quick         # 40 s and 20 s
    python -m bench.alerts --part page     # or --part alerter

(a) page: `run all` at the default rate with rule `hot` (temperature above 25 °C for 1 s,
tests/test_alerts_pipeline.py), the real page in headless Chromium, and room `lab` spiking to
30 °C for 3 s in every 6 (the tests' Spikes). For each firing: the page clock when its row
first shows as firing in the alerts panel, minus the event time of the reading that fired it
(the same observer as tests/test_alerts_page.py). Target: p99 ≤ 1 s.

(b) alerter: the embedded broker, `python -m pipeline.run alerter` with the default rules, and
one temperature producer at --rate readings/s in total (rooms × per-room rate, as bench/lag.py).
Each second: the alerter group's lag on `temperature` (high watermarks - committed offsets,
approximate on the embedded broker), and over the run the alerter's CPU in cores. Target: lag
flat (bench.lag's rule: its slope would add under half a second of readings over the run) and
≤ 0.3 of a core.

Every figure depends on what else the machine runs: say how loaded it was when quoting one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request

from selenium.common.exceptions import NoSuchElementException

from bench.common import Offsets, cpu_seconds, percentile, print_table, temporary_stack, write_result
from bench.lag import slope
from pipeline.alerter import GROUP
from tests.helpers import browser, stop_process, wait_for
from tests.test_alerts_page import WATCH
from tests.test_alerts_pipeline import RULES_TOML, Spikes


def page(seconds: float) -> dict:
    with temporary_stack() as stack:
        (stack.tmp / "rules.toml").write_text(RULES_TOML)
        stack.env["ALERT_RULES"] = str(stack.tmp / "rules.toml")
        run_all = stack.spawn("pipeline.run", "all", log_name="all")
        driver = browser()
        spikes = Spikes(stack.config())
        try:
            url = f"http://127.0.0.1:{stack.env['DASH_PORT']}/"
            wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 90, "the dashboard", ignore=(OSError,))
            driver.get(url)
            wait_for(lambda: driver.find_element("id", "status").text == "live", 60, "the page live", ignore=(NoSuchElementException,))
            driver.execute_script(WATCH)
            spikes.start()
            time.sleep(seconds)  # the run's length: what is measured is what happens meanwhile
            seen = driver.execute_script("return window.firingSeen")
        finally:
            spikes.stopping.set()
            driver.quit()
            stop_process(run_all)
    delays = [shown - event for key, shown, event in seen if key.startswith("hot|lab|")]
    return {"firings": len(delays), "delays_ms": delays, "p50_ms": percentile(delays, 50), "p99_ms": percentile(delays, 99),
            "max_ms": max(delays, default=None)}


def alerter(rate: int, per_room: float, seconds: float, warmup: float) -> dict:
    rooms = max(1, round(rate / per_room))
    with temporary_stack(RATE=f"{rate / rooms:g}") as stack, stack.broker():
        proc = stack.spawn("pipeline.run", "alerter", log_name="alerter")
        stack.wait_log("alerter", "assigned", proc, 60)
        offsets = Offsets(stack.bootstrap, "temperature", GROUP)
        producer = stack.spawn("pipeline.run", "producer", "temperature", "--rooms", str(rooms), "--rate", f"{rate / rooms:g}", log_name="producer")
        try:
            wait_for(lambda: offsets.high() > 0, 30, "the first readings")
            time.sleep(warmup)
            cpu0, t0, high0 = cpu_seconds([proc.pid]), time.monotonic(), offsets.high()
            samples = []
            while (now := time.monotonic()) - t0 < seconds:
                high = offsets.high()
                samples.append((now - t0, max(0, high - offsets.committed())))
                time.sleep(max(0.0, t0 + len(samples) - time.monotonic()))
            t1 = time.monotonic()
            achieved = (offsets.high() - high0) / (t1 - t0)
            cores = (cpu_seconds([proc.pid]) - cpu0) / (t1 - t0)
        finally:
            stop_process(producer)
            offsets.close()
            stop_process(proc)
    lags = [lag for _, lag in samples]
    lag_slope = slope([t for t, _ in samples], lags)
    return {"target_per_s": rate, "rooms": rooms, "achieved_per_s": round(achieved), "cpu_cores": round(cores, 3),
            "lag_max": max(lags), "lag_median": statistics.median(lags), "lag_last": lags[-1], "lag_slope_per_s": round(lag_slope, 1),
            "lag_flat": lag_slope * seconds <= 0.5 * rate, "samples": samples}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("both", "page", "alerter"), default="both")
    p.add_argument("--quick", action="store_true", help="40 s of spikes and 20 s at the alerter's rate")
    p.add_argument("--rate", type=int, default=22_000, help="readings/s for the alerter (default 22,000)")
    p.add_argument("--per-room", type=float, default=1000.0, help="readings/s per room (default 1000: 22 rooms)")
    args = p.parse_args()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} (1 min) on {os.cpu_count()} cores: other work on this machine moves every figure")
    results: dict = {"load_average_start": load}
    if args.part in ("both", "page"):
        r = results["page"] = page(40 if args.quick else 90)
        print_table(["firings", "p50 ms", "p99 ms", "max ms", "target"], [[r["firings"], r["p50_ms"], r["p99_ms"], r["max_ms"], "p99 ≤ 1,000"]],
                    title="(a) event time of the reading that fired -> firing shown in the alerts panel (default rate)")
    if args.part in ("both", "alerter"):
        r = results["alerter"] = alerter(args.rate, args.per_room, 20 if args.quick else 60, 5)
        print_table(["target/s", "achieved/s", "lag max", "lag p50", "lag last", "slope/s", "verdict", "CPU cores", "target"],
                    [[r["target_per_s"], r["achieved_per_s"], r["lag_max"], r["lag_median"], r["lag_last"], r["lag_slope_per_s"],
                      "flat" if r["lag_flat"] else "GROWING", r["cpu_cores"], "flat, ≤ 0.3 core"]],
                    title="(b) the alerter's group lag on temperature, sampled each second, and its CPU")
    results["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {results['load_average_end'][0]:.1f}")
    write_result("alerts", results, vars(args))


if __name__ == "__main__":
    main()
