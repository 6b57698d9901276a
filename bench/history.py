"""History reads: time from request to figure, and to CSV, for the 1 h, 24 h and 7 d ranges, per store size.

    python -m bench.history                # 10k, 1M and 10M rows; SQLite (+ QuestDB if set)
    python -m bench.history --quick        # 10k and 1M rows, 3 repeats
    python -m bench.history --cache-dir /tmp/hist-cache   # keep the filled SQLite files for reruns

Method: a store per size holds temperature readings of 10 rooms spread evenly over the 7 days
before a fixed end time (the fill time), written with the store's own write() in 100k-row
batches, so the SQLite rollups (10-second and minute) are kept exactly as in production
(Kafka is bypassed). "Request to figure" is what the dashboard's history callback does per chart:
`dash_app.history.topic_range(store, spec, end - range, end, max_points=2000)` (a downsampled
range comes with each bucket's min and max), then `dash_app.figures.line_figure` with the
callback's arguments (the span, the bucket width, out-of-band markers: each downsampled series
drawn as its mean over its min–max envelope), then the JSON serialisation Dash applies to a
callback's output (`plotly.io.json.to_json_plotly`). "Export" is what a chart's CSV button does:
the same `topic_range`, then `dash_app.graphs.export_csv`. Each cell is the median of --repeat
runs on an open store, after one first call (reported separately: it opens the connection).

The SQLite files are freshly written, so they sit in the OS page cache: these are warm-cache
figures. QuestDB rows run on a QuestDB of their own (pipeline.servers: Java and Maven; skipped
saying why where it cannot run), in tables bench_temperature_<size>.
Targets, to figure: 7 d over 10M rows < 500 ms (both); 1 h over 1M rows < 100 ms (SQLite),
< 200 ms (QuestDB); 7 d over 1M rows < 1 s (SQLite). Export of 7 d over 10M rows < 1 s (SQLite).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

from bench.common import Servers, print_table, write_result
from pipeline.servers import ServersUnavailable

HOUR_MS = 3_600_000
RANGES = {"1h": HOUR_MS, "24h": 24 * HOUR_MS, "7d": 7 * 24 * HOUR_MS}
SPAN_MS = RANGES["7d"]
MAX_POINTS = 2000
BATCH = 100_000
# (backend, size, range) -> target seconds
TARGETS = {
    ("sqlite", 10_000_000, "7d"): 0.5, ("questdb", 10_000_000, "7d"): 0.5,
    ("sqlite", 1_000_000, "1h"): 0.1, ("questdb", 1_000_000, "1h"): 0.2,
    ("sqlite", 1_000_000, "7d"): 1.0,
}
EXPORT_TARGETS = {("sqlite", 10_000_000, "7d"): 1.0}
Reading = namedtuple("Reading", "ts room value unit")  # what store.write reads: attributes by name


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def batches(size: int, rooms: int, end_ms: int):
    """Readings of `rooms` rooms, `size` in all, evenly spread over [end - 7 d, end), in ts order."""
    per_room = size // rooms
    step = SPAN_MS / per_room
    names = np.array([f"room-{r + 1}" for r in range(rooms)], dtype=object)
    rng = np.random.default_rng(42)
    start = end_ms - SPAN_MS
    rows_per_batch = max(1, BATCH // rooms)
    for i0 in range(0, per_room, rows_per_batch):
        i = np.arange(i0, min(per_room, i0 + rows_per_batch))
        # room r's readings sit r/rooms of a step after room 0's, so rooms interleave in time
        ts = (start + np.add.outer(i * step, np.arange(rooms) * step / rooms)).astype("int64").ravel()
        room = np.tile(names, len(i))
        day = 2 * np.pi * (ts % 86_400_000) / 86_400_000
        value = np.round(21 + 2 * np.sin(day + np.tile(np.arange(rooms), len(i))) + rng.normal(0, 0.2, len(ts)), 2)
        yield [Reading(t, r, v, "°C") for t, r, v in zip(ts.tolist(), room.tolist(), value.tolist())]


# -- stores ------------------------------------------------------------------------------------------
def sqlite_store(size: int, rooms: int, cache: Path):
    """An SQLiteStore holding `size` rows, reused from `cache` when a matching file is there."""
    from pipeline.schema import TOPICS
    from pipeline.store.sqlite import SQLiteStore

    spec = TOPICS["temperature"]
    path, meta_path = cache / f"history-{label(size)}-{rooms}rooms.db", cache / f"history-{label(size)}-{rooms}rooms.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        print(f"  reusing {path} ({label(size)} rows, filled at {meta['fill_rows_per_s']:,} rows/s)", flush=True)
        store = SQLiteStore(str(path))
        store.ensure_tables()  # a file filled by an earlier version gets its rollup brought up to date
        return store, spec, meta
    for p in (path, meta_path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    store = SQLiteStore(str(path))
    store.ensure_tables()
    end_ms = int(time.time() * 1000) // 60_000 * 60_000
    started = time.monotonic()
    for chunk in batches(size, rooms, end_ms):
        store.write(spec, chunk, end_ms)
    store._run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"))  # as a long-running writer would have
    elapsed = time.monotonic() - started
    count = store.count(spec)
    meta = {"end_ms": end_ms, "rows": count, "fill_seconds": round(elapsed, 1), "fill_rows_per_s": round(count / elapsed),
            "file_mb": round(path.stat().st_size / 1e6, 1)}
    meta_path.write_text(json.dumps(meta))
    print(f"  filled {path.name}: {count:,} rows in {elapsed:.1f}s ({count / elapsed:,.0f} rows/s), {meta['file_mb']} MB", flush=True)
    return store, spec, meta


def questdb_store(servers: Servers, size: int, rooms: int):
    """A QuestDBStore and a bench-only table bench_temperature_<size> filled with `size` rows."""
    from pipeline.schema import TOPICS
    from pipeline.store import open_store
    from pipeline.store.questdb import _ddl

    spec = dataclasses.replace(TOPICS["temperature"], name=f"bench_temperature_{label(size).lower()}")
    store = open_store(servers.questdb.store_url, servers.questdb.pg_url)
    store._query(f"DROP TABLE IF EXISTS {spec.name}")
    store._query(_ddl(spec))  # before ILP: an auto-created table would lack the designated ts and dedup
    end_ms = int(time.time() * 1000) // 60_000 * 60_000
    started = time.monotonic()
    for chunk in batches(size, rooms, end_ms):
        store.write(spec, chunk, end_ms)
    deadline = time.monotonic() + 600
    while (count := store.count(spec)) < size // rooms * rooms:  # WAL: visible shortly after the flush
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec.name} shows {count} rows, not {size}")
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    meta = {"end_ms": end_ms, "rows": count, "fill_seconds": round(elapsed, 1), "fill_rows_per_s": round(count / elapsed)}
    print(f"  filled QuestDB table {spec.name}: {count:,} rows in {elapsed:.1f}s ({count / elapsed:,.0f} rows/s)", flush=True)
    return store, spec, meta


# -- measurement -------------------------------------------------------------------------------------
def request_to_figure(store, spec, chart, start_ms: int, end_ms: int) -> dict:
    from plotly.io.json import to_json_plotly

    from dash_app.figures import line_figure
    from dash_app.graphs import export_csv
    from dash_app.history import topic_range
    from pipeline.store.base import bucket_ms

    t0 = time.perf_counter()
    frame = topic_range(store, spec, start_ms, end_ms, MAX_POINTS)
    t1 = time.perf_counter()
    # As the history callback draws it (dash_app.graphs.load, RATE 1: one reading per second).
    fig = line_figure(chart, frame, span=(start_ms, end_ms), interval_ms=1000, bucket_ms=bucket_ms(start_ms, end_ms, MAX_POINTS),
                      mark_outside=True)
    t2 = time.perf_counter()
    payload = to_json_plotly(fig)  # what Dash does with a callback's figure output
    t3 = time.perf_counter()
    csv = export_csv(chart, topic_range(store, spec, start_ms, end_ms, MAX_POINTS))  # the CSV button: its own store read
    t4 = time.perf_counter()
    return {"query": t1 - t0, "figure": t2 - t1, "json": t3 - t2, "total": t3 - t0, "export": t4 - t3,
            "rows": len(frame), "traces": len(fig.data), "json_bytes": len(payload), "csv_bytes": len(csv),
            "envelope": "value_max" in frame}


def measure(backend: str, store, spec, meta: dict, size: int, ranges: list[str], repeat: int) -> list[dict]:
    from dash_app.charts import CHARTS

    chart = next(c for c in CHARTS if c.topic == "temperature")
    out = []
    for name in ranges:
        end_ms = meta["end_ms"]
        start_ms = end_ms - RANGES[name]
        first = request_to_figure(store, spec, chart, start_ms, end_ms)
        runs = [request_to_figure(store, spec, chart, start_ms, end_ms) for _ in range(repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("query", "figure", "json", "total", "export")}
        target = TARGETS.get((backend, size, name))
        export_target = EXPORT_TARGETS.get((backend, size, name))
        out.append({
            "backend": backend, "rows_stored": meta["rows"], "size": label(size), "range": name,
            "median_s": round(med["total"], 4), "max_s": round(max(r["total"] for r in runs), 4), "first_s": round(first["total"], 4),
            "query_s": round(med["query"], 4), "figure_s": round(med["figure"], 4), "json_s": round(med["json"], 4),
            "points": runs[0]["rows"], "envelope": runs[0]["envelope"], "traces": runs[0]["traces"],
            "json_kb": round(runs[0]["json_bytes"] / 1024), "repeat": repeat, "target_s": target,
            "target_met": None if target is None else med["total"] < target,
            "export_s": round(med["export"], 4), "csv_kb": round(runs[0]["csv_bytes"] / 1024), "export_target_s": export_target,
            "export_target_met": None if export_target is None else med["export"] < export_target,
        })
    return out


def verdict(target: float | None, met: bool | None) -> str:
    return "" if target is None else f"{'met' if met else 'MISSED'} (< {target * 1000:.0f})"


def row(r: dict) -> list:
    if "skipped" in r:
        return [r["backend"], r["size"], r["range"]] + [None] * 11 + [f"skipped: {r['skipped']}"]
    ms = lambda s: round(s * 1000, 1)
    return [r["backend"], r["size"], r["range"], ms(r["median_s"]), ms(r["max_s"]), ms(r["first_s"]), ms(r["query_s"]),
            ms(r["figure_s"]), ms(r["json_s"]), r["points"], "yes" if r["envelope"] else "no", r["json_kb"],
            verdict(r["target_s"], r["target_met"]), ms(r["export_s"]), verdict(r["export_target_s"], r["export_target_met"])]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes 10k,1M and 3 repeats (unless given)")
    p.add_argument("--sizes", help="stored rows per store, comma-separated (default 10k,1M,10M)")
    p.add_argument("--ranges", default="1h,24h,7d", help="ranges to read, of 1h,24h,7d (default all)")
    p.add_argument("--rooms", type=int, default=10, help="rooms the rows are spread over (default 10)")
    p.add_argument("--repeat", type=int, help="timed runs per cell; the median is reported (default 7; 3 with --quick)")
    p.add_argument("--backends", default="sqlite,questdb", help="of sqlite, questdb (default sqlite,questdb)")
    p.add_argument("--cache-dir", help="keep SQLite files here and reuse them on the next run (default: a temp dir, removed)")
    args = p.parse_args()
    sizes = [parse_size(s) for s in (args.sizes or ("10k,1M" if args.quick else "10k,1M,10M")).split(",")]
    ranges = [r.strip() for r in args.ranges.split(",")]
    repeat = args.repeat or (3 if args.quick else 7)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="bench-history-"))
    cache.mkdir(parents=True, exist_ok=True)
    results, fills = [], {}
    try:
        for backend in backends:
            try:
                with Servers(backend) as servers:
                    for size in sizes:
                        print(f"{backend}: {label(size)} rows", flush=True)
                        if backend == "sqlite":
                            store, spec, meta = sqlite_store(size, args.rooms, cache)
                        else:
                            store, spec, meta = questdb_store(servers, size, args.rooms)
                        fills[f"{backend}/{label(size)}"] = meta
                        try:
                            results += measure(backend, store, spec, meta, size, ranges, repeat)
                        finally:
                            store.close()
            except ServersUnavailable as exc:
                results += [{"backend": backend, "size": label(size), "range": r, "skipped": str(exc)} for size in sizes for r in ranges]
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache, ignore_errors=True)
    print_table(
        ["backend", "rows", "range", "median ms", "max ms", "first ms", "query ms", "figure ms", "json ms", "points", "envelope",
         "json KB", "target ms", "export ms", "export target ms"],
        [row(r) for r in results],
        title=f"Request to figure (topic_range + line_figure + to_json_plotly) and export (topic_range + export_csv), temperature, "
              f"{args.rooms} rooms, max_points {MAX_POINTS}, median of {repeat}",
    )
    params = {"sizes": [label(s) for s in sizes], "ranges": ranges, "rooms": args.rooms, "repeat": repeat, "max_points": MAX_POINTS,
              "backends": backends, "fill_batch_rows": BATCH}
    write_result("history", {"cells": results, "fills": fills,
                             "targets_s": {f"{b}/{label(s)}/{r}": t for (b, s, r), t in TARGETS.items()},
                             "export_targets_s": {f"{b}/{label(s)}/{r}": t for (b, s, r), t in EXPORT_TARGETS.items()}}, params)


if __name__ == "__main__":
    main()
