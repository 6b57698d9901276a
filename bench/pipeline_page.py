"""CPU of the dashboard process spent on /pipeline: its one poller, and 1 or 10 open pages.

    python -m bench.pipeline_page              # 30 s per phase
    python -m bench.pipeline_page --quick      # 10 s per phase

Method: `run all --no-dashboard` at the default rate on a fresh embedded broker, then the real
`python -m dash_app` (gunicorn, one worker) in four phases, each measured over --duration
seconds after a 10 s warm-up, as user + system CPU of the dashboard's processes (master and
worker) divided by wall time:

  A  dashboard with the poller replaced by a no-op thread, no page open (the live feed and the
     store check alone: the baseline)
  B  the real dashboard, no page open (its poller polls Kafka once a second)
  C  B with one /pipeline page open in headless Chromium
  D  B with ten /pipeline pages open (ten tabs; timer throttling of background tabs disabled,
     and each tab checked to be refreshing)

The poller's cost is B - A; the pages' cost C - B and D - B. The target: the poller and its
pages, D - A, under 5 % of a core. Also printed: the poller thread's own CPU per poll, as the
page shows it.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import urllib.request

import psutil

from bench.common import ROOT, print_table, temporary_stack, write_result
from pipeline.supervisor import STOP_BUDGET_S
from tests.helpers import Stack, browser, free_port, stop_process

NO_POLLER = (
    "import threading, dash_app.services as s\n"
    "class Idle(threading.Thread):\n"
    "    def __init__(self, *a, **k): super().__init__(daemon=True)\n"
    "    def run(self): pass\n"
    "    def latest(self): return 0, {'ok': None}\n"
    "s.PipelinePoller = Idle\n"
    "from dash_app.__main__ import main\n"
    "raise SystemExit(main([]))\n"
)


def start_dashboard(stack: Stack, port: int, poller: bool):
    import subprocess

    env = {**stack.env, "DASH_PORT": str(port)}
    log = open(stack.tmp / f"dash-{port}.log", "ab")  # noqa: SIM115 - the child keeps it
    args = [sys.executable, "-m", "dash_app"] if poller else [sys.executable, "-c", NO_POLLER]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack.procs.append(proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not start:\n{(stack.tmp / f'dash-{port}.log').read_text()[-2000:]}") from None
            time.sleep(0.3)


def family_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the process and each of its descendants (gunicorn's master and worker), by pid."""
    out = {}
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    except psutil.Error:
        pass
    return out


def measure(proc, warmup: float, duration: float) -> float:
    """% of a core over `duration`; a process that started or ended in between fails the phase."""
    time.sleep(warmup)
    before, t0 = family_cpu(proc.pid), time.monotonic()
    time.sleep(duration)
    after = family_cpu(proc.pid)
    if set(after) != set(before):
        raise RuntimeError(f"the dashboard's processes changed during the measurement: {sorted(before)} -> {sorted(after)}")
    return sum(after[p] - before[p] for p in after) / (time.monotonic() - t0) * 100


def refreshing(driver) -> bool:
    first = driver.find_element("id", "pipeline-updated").text
    time.sleep(2.5)
    return driver.find_element("id", "pipeline-updated").text != first and first.startswith("updated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30, help="seconds measured per phase (default 30)")
    ap.add_argument("--warmup", type=float, default=10, help="seconds before each measurement (default 10)")
    ap.add_argument("--pages", type=int, default=10, help="pages open in the last phase (default 10)")
    ap.add_argument("--quick", action="store_true", help="10 s per phase")
    args = ap.parse_args()
    if args.quick:
        args.duration = 10
    results: dict[str, float] = {}
    with temporary_stack() as stack:
        pipeline = stack.spawn("pipeline.run", "all", "--no-dashboard", log_name="all")
        stack.wait_log("all", "assigned partitions", pipeline, 60)

        dash = start_dashboard(stack, free_port(), poller=False)
        results["A: no poller, no page"] = measure(dash, args.warmup, args.duration)
        stop_process(dash)

        port = free_port()
        dash = start_dashboard(stack, port, poller=True)
        results["B: poller, no page"] = measure(dash, args.warmup, args.duration)
        driver = browser()
        try:
            url = f"http://127.0.0.1:{port}/pipeline"
            driver.get(url)
            time.sleep(3)
            assert refreshing(driver), "the page does not refresh"
            results["C: poller, 1 page"] = measure(dash, args.warmup, args.duration)
            for _ in range(args.pages - 1):
                driver.switch_to.new_window("tab")
                driver.get(url)
            time.sleep(3)
            stale = [h for h in driver.window_handles if not (driver.switch_to.window(h) or refreshing(driver))]
            assert not stale, f"{len(stale)} of {args.pages} pages do not refresh"
            results[f"D: poller, {args.pages} pages"] = measure(dash, args.warmup, args.duration)
            cpu_ms = []  # the poller thread's own CPU per poll, as the page shows it
            for _ in range(10):
                cpu_ms += [float(m) for m in re.findall(r"poller CPU ([\d.]+) ms", driver.find_element("id", "pipeline-updated").text)]
                time.sleep(1)
        finally:
            driver.quit()
        stop_process(dash)
        stop_process(pipeline, timeout=STOP_BUDGET_S)

    a, b = results["A: no poller, no page"], results["B: poller, no page"]
    c, d = results["C: poller, 1 page"], results[f"D: poller, {args.pages} pages"]
    rows = [(name, round(v, 2)) for name, v in results.items()]
    print_table(["phase", "dashboard CPU, % of a core"], rows, title=f"dashboard process CPU ({args.duration:.0f} s per phase)")
    derived = {
        "poller (B - A)": b - a,
        "1 page (C - B)": c - b,
        f"{args.pages} pages (D - B)": d - b,
        "poller + 1 page (C - A)": c - a,
        f"poller + {args.pages} pages (D - A)": d - a,
        "poller thread CPU per poll, ms (median)": statistics.median(cpu_ms) if cpu_ms else float("nan"),
    }
    print_table(["cost", "% of a core"], [(k, round(v, 2)) for k, v in derived.items()])
    verdict = "under" if d - a < 5 else "OVER"
    print(f"\npoller and {args.pages} pages: {d - a:.2f} % of a core, {verdict} the 5 % target")
    write_result("pipeline_page", {"phases": results, "derived": derived},
                 {"duration_s": args.duration, "warmup_s": args.warmup, "pages": args.pages})


if __name__ == "__main__":
    main()
