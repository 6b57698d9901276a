"""Writer consumer lag while the real producer runs at a fixed total rate.

    python -m bench.lag                    # 5,000 and 20,000 msg/s, 60 s each, 1 writer, SQLite
    python -m bench.lag --quick            # 15 s each
    python -m bench.lag --writers 3 --rates 20000 --duration 30

Method, per (backend, rate): a fresh embedded broker and empty store; W writers
(`python -m pipeline.run consumer temperature`) start and join their group; then one
`python -m pipeline.run producer temperature --rooms R --rate X` runs with R * X = the total
rate (X = --sensor-rate readings/s per room). Every second the lag is sampled as
(sum of the topic's high watermarks) - (sum of the offsets group store-writer.temperature has
committed). On Tansu the watermarks are approximate after multi-record batches (DESIGN.md), so
small lags are within its error. The first --warmup seconds after the first message are left
out. Reported: achieved produce rate (watermark growth, and the producer's own log), lag
max / p95 / median / last, its least-squares slope over the run (messages/s; > 0 means the
writers fall behind), the time to drain after the producer stops, and CPU of each process.
The lag reads as "growing" when the slope would add more than half a second of messages
over the run; the target is a lag that never passes one writer batch (--batch-size).

Backends: `sqlite` (the embedded broker), `questdb` (the embedded broker into QuestDB) and
`kafka+questdb` (Apache Kafka into QuestDB); QuestDB and Apache Kafka run from pipeline.servers
(Java and Maven; a backend that cannot run is skipped saying why), emptied before each run.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

from bench.common import Offsets, Servers, cpu_seconds, percentile, print_table, setting, temporary_stack, write_result
from pipeline.servers import ServersUnavailable
from tests.helpers import stop_process

TOPIC = "temperature"
GROUP = f"store-writer.{TOPIC}"


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def producer_rates(log: str) -> list[float]:
    """The rates the producer reported every 10 s ("sent N readings in Ts (R/s)")."""
    return [float(m) for m in re.findall(r"sent \d+ readings in \d+s \(([\d.]+)/s\)", log)]


def measure(backend: str, servers: Servers, rate: int, args) -> dict:
    rooms = max(1, round(rate / args.sensor_rate))
    per_sensor = rate / rooms
    env = {"WRITER_BATCH_SIZE": str(args.batch_size), "WRITER_FLUSH_MS": str(args.flush_ms)}
    servers.reset()
    with temporary_stack(args.keep, **servers.settings, **env) as stack, stack.broker(partitions=args.partitions) as broker:
        writers = [stack.spawn("pipeline.run", "consumer", TOPIC, log_name=f"writer-{i}") for i in range(args.writers)]
        for i, w in enumerate(writers):
            stack.wait_log(f"writer-{i}", "assigned partitions", w, 60)
        offsets = Offsets(stack.bootstrap, TOPIC, GROUP)
        prod = stack.spawn("pipeline.run", "producer", TOPIC, "--rooms", str(rooms), "--rate", f"{per_sensor:g}", log_name="producer")
        try:
            deadline = time.monotonic() + 30
            while offsets.high() == 0:
                if prod.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the producer sent nothing:\n{stack.log('producer')[-2000:]}")
                time.sleep(0.05)
            first = time.monotonic()
            time.sleep(args.warmup)
            pids = {"writers": [w.pid for w in writers], "producer": [prod.pid], "broker": [broker.pid if broker else servers.broker_pid]}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
            t0, high0 = time.monotonic(), offsets.high()
            samples = []  # (seconds since t0, high, committed, lag)
            next_at = t0
            while (now := time.monotonic()) - t0 < args.duration:
                for i, w in enumerate([*writers, prod]):
                    if w.poll() is not None:
                        raise RuntimeError(f"a pipeline process exited with {w.returncode}")
                high, committed = offsets.high(), offsets.committed()
                samples.append((now - t0, high, committed, max(0, high - committed)))
                next_at += 1.0
                time.sleep(max(0.0, next_at - time.monotonic()))
            t1 = time.monotonic()
            high1 = offsets.high()
            cpu = {k: round((cpu_seconds(v) - cpu0[k]) / (t1 - t0), 2) for k, v in pids.items()}
        finally:
            stop_process(prod)
        # Drain: how long until the writers have committed what was produced.
        stopped, high_final = time.monotonic(), offsets.high()
        drained = None
        while time.monotonic() - stopped < args.drain_timeout:
            if offsets.committed() >= high_final:
                drained = time.monotonic() - stopped
                break
            time.sleep(0.05)
        final_lag = high_final - offsets.committed()
        offsets.close()
        for w in writers:
            stop_process(w)
        from pipeline.schema import TOPICS
        with stack.open_store() as store:
            stored = store.count(TOPICS[TOPIC]) if backend == "sqlite" else None
        reported = producer_rates(stack.log("producer"))

    lags = [s[3] for s in samples]
    xs = [s[0] for s in samples]
    lag_slope = slope(xs, lags)
    achieved = (high1 - high0) / (t1 - t0)
    growing = lag_slope * args.duration > 0.5 * rate
    return {
        "backend": backend, "writers": args.writers, "target_msgs_per_s": rate, "rooms": rooms, "rate_per_room": per_sensor,
        "achieved_msgs_per_s": round(achieved), "producer_reported_msgs_per_s": reported,
        "reached_rate": achieved >= 0.95 * rate,
        "lag_max": max(lags), "lag_p95": percentile(lags, 95), "lag_median": statistics.median(lags), "lag_last": lags[-1],
        "lag_max_s": round(max(lags) / max(achieved, 1), 3),
        "lag_under_one_batch": max(lags) <= args.batch_size,
        "lag_slope_msgs_per_s": round(lag_slope, 1), "lag_growing": growing,
        "drain_s": None if drained is None else round(drained, 2), "lag_after_drain": final_lag,
        "produced": high_final, "stored": stored,
        "cpu_cores": cpu, "seconds": round(t1 - t0, 1), "warmup_s": args.warmup, "first_message_to_sampling_s": round(t0 - first, 1),
        "samples": [{"t": round(t, 2), "high": h, "committed": c, "lag": lag} for t, h, c, lag in samples],
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="15 s per rate (unless --duration is given)")
    p.add_argument("--rates", default="5000,20000", help="total produce rates in messages/s, comma-separated (default 5000,20000)")
    p.add_argument("--duration", type=float, help="seconds of sampling per rate (default 60; 15 with --quick)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after the first message before sampling (default 3)")
    p.add_argument("--sensor-rate", type=float, default=50.0, help="readings/s per room; rooms = rate / this (default 50)")
    p.add_argument("--writers", type=int, default=1, help="writer processes in the group (default 1)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the topic (default 3)")
    p.add_argument("--backends", default="sqlite,questdb", help="of sqlite, questdb, kafka+questdb (default sqlite,questdb)")
    p.add_argument("--batch-size", type=int, default=setting("WRITER_BATCH_SIZE"), help="WRITER_BATCH_SIZE (default: the product's)")
    p.add_argument("--flush-ms", type=int, default=setting("WRITER_FLUSH_MS"), help="WRITER_FLUSH_MS (default: the product's)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="longest wait for the lag to clear after the producer stops")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, store)")
    args = p.parse_args()
    args.duration = args.duration or (15.0 if args.quick else 60.0)
    rates = [int(r) for r in args.rates.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results, rows = [], []
    for backend in backends:
        try:
            with Servers(backend) as servers:
                for rate in rates:
                    print(f"running {backend}: {rate:,} msg/s for {args.duration:.0f}s with {args.writers} writer(s) ...", flush=True)
                    r = measure(backend, servers, rate, args)
                    results.append(r)
                    rows.append([backend, args.writers, rate, r["achieved_msgs_per_s"], r["lag_max"], r["lag_p95"], r["lag_median"], r["lag_last"],
                                 r["lag_slope_msgs_per_s"], r["drain_s"], r["cpu_cores"]["writers"], r["cpu_cores"]["producer"],
                                 ("GROWING" if r["lag_growing"] else "steady") + ("" if r["reached_rate"] else ", rate not reached")
                                 + ("" if r["lag_under_one_batch"] else f", max over one batch ({args.batch_size:,})")])
        except ServersUnavailable as exc:
            for rate in rates:
                results.append({"backend": backend, "target_msgs_per_s": rate, "skipped": str(exc)})
                rows.append([backend, args.writers, rate] + [None] * 9 + [f"skipped: {exc}"])
    print_table(
        ["backend", "writers", "target/s", "achieved/s", "lag max", "lag p95", "lag p50", "lag last", "slope/s", "drain s", "writer CPU", "producer CPU", "verdict"],
        rows, title=f"Writer lag in messages, sampled each second for {args.duration:.0f}s (batch {args.batch_size}, flush {args.flush_ms} ms, {args.sensor_rate:g}/s per room)",
    )
    print("lag = sum of high watermarks - sum of committed offsets (approximate on Tansu); CPU in cores")
    params = {k: getattr(args, k) for k in ("duration", "warmup", "sensor_rate", "writers", "partitions", "batch_size", "flush_ms")}
    params.update(rates=rates, backends=backends)
    write_result("lag", {"runs": results}, params)


if __name__ == "__main__":
    main()
