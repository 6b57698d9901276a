"""Soak: the whole product (`run all`) at a rate for a while, sampled every --interval seconds.

    python -m bench.soak --rate 50 --duration 1800          # 30 minutes at 550 readings/s, a page open
    python -m bench.soak --accelerated --duration 540       # a day's record batches at the default rate, in 9 minutes
    python -m bench.soak --quick                            # 2 minutes at --rate 1

The dashboard runs and one page of it is open in headless Chromium (`--no-dashboard`: neither).
Each sample records the CPU (cores, over the interval) and RSS of the embedded broker(s),
producers, writers, dashboard and Chromium, the producers' queue depth (from their 10 s
progress lines), the writers' lag on the current broker (true end offsets - committed), the
page's newest-point age (now - the newest x of any trace of the page's charts) and the number
of broker renewals so far. At the end, Ctrl-C stops the product and the run
checks sent (the producers' own totals) = stored, and the longest gap between consecutive
readings of any series. The slope of each series is printed (least squares, per minute).

--accelerated adds a pump: valid temperature readings of a day ago for rooms ballast-0..9, one
message per record batch (linger 0), at up to --pump-batches per second but no faster than the
broker acknowledges them, following broker renewals, until the broker has taken --pump-total
batches (default: a day of the default rate's batches, 3 producers x 3 partitions x 86,400 s);
the run then ends (or at --duration). The pump's readings are excluded from sent = stored.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time

import psutil
from selenium.common.exceptions import WebDriverException

from bench.common import print_table, temporary_stack, write_result
from bench.lag import slope
from tests.helpers import browser, producer_totals, wait_for

KINDS = ("broker", "producer", "writer", "dashboard", "chromium")
PUMP_QUEUED = 1000  # most ballast batches the pump has waiting for the broker


def classify(p: psutil.Process) -> str | None:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return None
    if "tansu" in cmd:
        return "broker"
    if "pipeline.run producer" in cmd:
        return "producer"
    if "pipeline.run consumer" in cmd:
        return "writer"
    if "dash_app" in cmd:
        return "dashboard"
    if "chrom" in cmd:
        return "chromium"
    return None


class Sampler:
    def __init__(self, *roots: int):
        self.roots = [psutil.Process(r) for r in roots]  # run all, and chromedriver (Chromium runs under it)
        self.cpu: dict[int, float] = {}
        self.t, self.wall = time.monotonic(), time.time()

    def sample(self) -> dict:
        now = time.monotonic()
        out = {k: {"cpu": 0.0, "rss_mb": 0.0} for k in KINDS}
        seen = {}
        family = []
        for root in self.roots:
            try:
                family += root.children(recursive=True)
            except psutil.Error:
                pass
        for p in family:
            kind = classify(p)
            if not kind:
                continue
            try:
                t = p.cpu_times()
                cpu = t.user + t.system
                out[kind]["rss_mb"] += p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            seen[p.pid] = cpu
            if p.pid not in self.cpu:  # started since the last sample (a renewed broker, new writers): all its CPU
                try:
                    before = 0.0 if p.create_time() >= self.wall and self.cpu else cpu
                except psutil.Error:
                    before = cpu
            else:
                before = self.cpu[p.pid]
            out[kind]["cpu"] += (cpu - before) / max(now - self.t, 1e-6)
        self.cpu, self.t, self.wall = seen, now, time.time()
        return {k: {"cpu": round(v["cpu"], 3), "rss_mb": round(v["rss_mb"], 1)} for k, v in out.items()}


def writer_lag(cfg) -> int | None:
    from pipeline.broker import current_address
    from pipeline.kafka import group_progress
    from pipeline.schema import TOPICS
    from pipeline.writer import group_id

    try:
        return sum(end - done for done, end in (group_progress(current_address(cfg), t, group_id(s), timeout=5) for t, s in TOPICS.items()))
    except Exception:  # noqa: BLE001 - a broker being renewed
        return None


def pump(cfg, total: int, per_s: float, stop: threading.Event, sent: list[int]) -> None:
    """Ballast: one-record batches at up to `per_s`, never more than PUMP_QUEUED unacknowledged (so
    the pump goes at the speed the broker takes them instead of queueing until messages time
    out, which looked like minutes-long stalls). `sent[0]`: batches the broker acknowledged."""
    from confluent_kafka import Producer

    from pipeline.broker import current_address

    def delivered(err, _msg) -> None:
        if err is None:
            sent[0] += 1

    address, producer = None, None
    base = int(time.time() * 1000) - 86_400_000
    t0 = time.monotonic()
    i = 0
    while i < total and not stop.is_set():
        if i % 200 == 0 and current_address(cfg) != address:
            if producer is not None:
                producer.flush(10)
            address = current_address(cfg)
            producer = Producer({"bootstrap.servers": address, "linger.ms": 0, "batch.num.messages": 1, "log_level": 0})
        if len(producer) >= PUMP_QUEUED:
            producer.poll(0.05)
            continue
        room = f"ballast-{i % 10}"
        body = {"ts": base + i // 10, "room": room, "value": 20.0, "unit": "°C"}
        producer.produce("temperature", key=room.encode(), value=json.dumps(body).encode(), on_delivery=delivered)
        i += 1
        if i % 100 == 0:
            producer.poll(0)
            time.sleep(max(0.0, t0 + i / per_s - time.monotonic()))
    if producer is not None:
        producer.flush(30)


# Newest x (epoch ms) over every trace of every chart on the page, and the browser's clock.
NEWEST = """let newest = -Infinity;
for (const gd of document.querySelectorAll('.js-plotly-plot')) {
  for (const t of gd.data || []) {
    for (const x of t.x || []) {
      const v = typeof x === 'number' ? x : Date.parse(x);
      if (v > newest) newest = v;
    }
  }
}
return [newest, Date.now()];"""


def page_age(driver) -> float | None:
    """Seconds between now and the newest point drawn on the page (None if it shows none)."""
    try:
        newest, now = driver.execute_script(NEWEST)
    except Exception:  # noqa: BLE001 - a page reloading its history
        return None
    return round((now - newest) / 1000, 2) if newest is not None and newest > 0 else None


def open_page(url: str):
    import urllib.request

    wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, 90, "the dashboard", ignore=(OSError,))
    driver = browser()
    driver.get(url)
    wait_for(lambda: driver.find_element("id", "status").text == "live", 90, "the page to go live", ignore=(WebDriverException,))
    wait_for(lambda: page_age(driver) is not None, 60, "points on the page")
    return driver


def slope_noise(xs: list[float], ys: list[float]) -> float:
    """Two standard errors of the least-squares slope: a slope smaller than this is noise."""
    n = len(xs)
    if n < 3:
        return 0.0
    b = slope(xs, ys)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return 2 * (resid / (n - 2) / den) ** 0.5 if den else 0.0


def queue_depths(log: str) -> int:
    """Sum over producers of the latest 'N waiting for the broker'."""
    last: dict[str, int] = {}
    for name, n in re.findall(r"(producer\.\w+)\s+sent \d+ readings .*?, (\d+) waiting for the broker", log):
        last[name] = int(n)
    return sum(last.values())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1.0, help="readings/s per sensor (RATE), default 1")
    p.add_argument("--duration", type=float, help="seconds (default 600; 120 with --quick)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default 30)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="run neither the dashboard nor a page")
    p.add_argument("--accelerated", action="store_true", help="pump a day's worth of record batches in")
    p.add_argument("--pump-batches", type=float, default=1500.0,
                   help="pump batches per second (default 1500; at 3000 the pump alone saturated the broker)")
    p.add_argument("--pump-total", type=int, default=9 * 86_400, help="pump batches in all (default a day's: 777,600)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.duration = args.duration or (120.0 if args.quick else 600.0)
    if args.quick:
        args.interval = min(args.interval, 10.0)

    from pipeline.schema import TOPICS
    from pipeline.store import open_store

    driver = None
    with temporary_stack(keep=args.keep) as stack:
        cfg = stack.config()
        started_ms = int(time.time() * 1000)
        cmd = ["pipeline.run", "all", "--rate", f"{args.rate:g}"] + ([] if args.dashboard else ["--no-dashboard"])
        proc = stack.spawn(*cmd, log_name="all")
        stack.wait_log("all", "started producer systemusage", proc, 60)
        if args.dashboard:
            driver = open_page(f"http://127.0.0.1:{stack.env['DASH_PORT']}/")
        sampler = Sampler(proc.pid, *([driver.service.process.pid] if driver else []))
        stop_pump, pumped = threading.Event(), [0]
        pumper = None
        if args.accelerated:
            time.sleep(5)
            pumper = threading.Thread(target=pump, args=(cfg, args.pump_total, args.pump_batches, stop_pump, pumped), daemon=True)
            pumper.start()
        samples = []
        t0 = time.monotonic()
        sampler.sample()
        while time.monotonic() - t0 < args.duration and (pumper is None or pumper.is_alive()):
            time.sleep(args.interval)
            if proc.poll() is not None:
                raise SystemExit(f"run all exited with {proc.returncode}:\n{stack.log('all')[-3000:]}")
            log = stack.log("all")
            s = {"t_min": round((time.monotonic() - t0) / 60, 2), **sampler.sample(), "queue": queue_depths(log),
                 "lag": writer_lag(cfg), "page_age_s": page_age(driver) if driver else None,
                 "renewals": log.count("embedded broker renewed"), "pumped": pumped[0]}
            samples.append(s)
            print(f"{s['t_min']:6.1f} min  broker {s['broker']['cpu']:.2f} cores {s['broker']['rss_mb']:.0f} MB  producers {s['producer']['cpu']:.2f}"
                  f"  writers {s['writer']['cpu']:.2f}  dashboard {s['dashboard']['cpu']:.2f}  chromium {s['chromium']['cpu']:.2f}"
                  f"  queue {s['queue']}  lag {s['lag']}  page age {s['page_age_s']} s  renewals {s['renewals']}  pumped {s['pumped']:,}", flush=True)
        stop_pump.set()
        if pumper:
            pumper.join(60)
        if driver:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(180)
        log = stack.log("all")
        sent = sum(n for n, _failed, _left in producer_totals(log).values())
        stored, gap = 0, 0.0
        with open_store(stack.store_url) as store:
            for spec in TOPICS.values():
                frame = store.since(spec, started_ms - 60_000)
                frame = frame[~frame[spec.key].astype(str).str.startswith("ballast-")]
                stored += len(frame)
                for _k, rows in frame.groupby(spec.key):
                    ts = rows.ts.astype("int64").sort_values()
                    if len(ts) > 1:
                        gap = max(gap, float(ts.diff().max()))
        renewal_s = [float(x) for x in re.findall(r"embedded broker renewed: .* in ([\d.]+)s", log)]

    xs = [s["t_min"] for s in samples]
    series = {f"{k} {m}": [s[k][m] for s in samples] for k in KINDS for m in ("cpu", "rss_mb") if any(s[k][m] for s in samples)}
    series["producer queue"] = [s["queue"] for s in samples]
    series["writer lag"] = [s["lag"] or 0 for s in samples]
    if args.accelerated:  # batches/s the broker took from the pump since the sample before
        times = [0.0, *(x * 60 for x in xs)]
        pumped_at = [0, *(s["pumped"] for s in samples)]
        series["pump batches/s"] = [round((pumped_at[i + 1] - pumped_at[i]) / (times[i + 1] - times[i])) for i in range(len(samples))]
    if args.dashboard:
        ages = [(x, s["page_age_s"]) for x, s in zip(xs, samples) if s["page_age_s"] is not None]
        if ages:
            series["page newest-point age s"] = [a for _x, a in ages]
    xs_of = {"page newest-point age s": [x for x, _a in ages]} if args.dashboard and ages else {}
    rows = [[name, min(v), max(v), v[-1], round(slope(xs_of.get(name, xs), v), 4), round(slope_noise(xs_of.get(name, xs), v), 4)]
            for name, v in series.items()]
    print_table(["series", "min", "max", "last", "slope/min", "± 2 SE"], rows,
                title=f"Soak: rate {args.rate:g}/sensor, {xs[-1]:.0f} min{', accelerated' if args.accelerated else ''}")
    print(f"exit {rc}; sent {sent}, stored {stored} ({'equal' if sent == stored else 'DIFFERENT'}); longest gap in a series {gap:.0f} ms "
          f"(interval {1000 / args.rate:.0f} ms); renewals {len(renewal_s)} (each {', '.join(f'{x:.1f}' for x in renewal_s)} s); pumped {pumped[0]:,} batches")
    name = "soak-accelerated" if args.accelerated else f"soak-rate{args.rate:g}"
    write_result(name, {"samples": samples, "slopes_per_min": {r[0]: r[4] for r in rows}, "slope_2se_per_min": {r[0]: r[5] for r in rows}, "sent": sent, "stored": stored,
                        "longest_gap_ms": gap, "renewals": len(renewal_s), "renewal_s": renewal_s, "pumped": pumped[0], "exit": rc},
                 {k: getattr(args, k) for k in ("rate", "duration", "interval", "accelerated", "pump_batches", "pump_total", "dashboard")})


if __name__ == "__main__":
    main()
