"""Sustained ingest: rows/s from the temperature topic into the store, per backend and writer count.

    python -m bench.ingest                 # 2M messages, 1 and 3 writers, 3 runs each, SQLite and QuestDB
    python -m bench.ingest --quick --repeat 1   # 100k messages once, for a check in ~1 minute
    python -m bench.ingest --profile       # also run one writer in-process under cProfile

Method, per (backend, writers): a fresh embedded broker (free port, temp RUN_DIR) and an empty
store; N valid temperature messages (many rooms, 1 s apart per room, keyed by room) are produced
to the topic first; then W writers (`python -m pipeline.run consumer temperature`, one consumer
group) start. Progress is polled every 10 ms through the group's committed offsets (a writer
commits right after its store write; cheap to read), and the store is counted to confirm the end.
- rows/s (sustained, the figure compared with the target): rows committed while the committed
  total went from 10% to 90% of N, divided by that time; each (backend, writers) runs --repeat
  times (3) and the median is compared, since a writer and its write process on two cores vary
  from run to run. Writer and broker CPU are their user+system CPU seconds over the same window
  divided by it (1.0 = one core busy); a writer's includes its write process.
- overall rows/s: from the first row visible in the store (the ~3 s group join is left out) to all
  N stored; it includes start-up and the last partial batch's WRITER_FLUSH_MS wait, which weigh a
  lot in short (--quick) runs.

QuestDB and Apache Kafka run from pipeline.servers (Java and Maven; a backend that cannot run is
skipped saying why), started once per backend and emptied before each run: `questdb` is the
embedded broker into QuestDB, `kafka+questdb` Apache Kafka into QuestDB.
Writer CPU per row (µs) is the writers' user+system CPU over the sustained window divided by
the rows committed in it: consuming, validating, writing with `received_at`, and committing.
Before the runs, `costs()` times the steps after consuming in this process (CPU µs per row:
`validate_batch`, the SQLite write, the QuestDB ILP encoding of a batch without a server) and
`decoders()` compares ways to take a batch from bytes to columns; `--costs` runs only those.
Into QuestDB, each backend also runs the QuestDB client alone (`ceiling()`): one Sender sends
the same rows in batches of the same size, frames built beforehand, with nothing of Kafka or of
the writer; its sustained rows/s (same 10%-90% window) is the ceiling. Every backend also runs
the Kafka consumer alone (`consume_alone()`): the writers' consumer settings, the same messages
taken in batches of the same size and dropped, the most one writer could take from that broker.
Targets (one writer): >= 300,000 rows/s into SQLite, >= 400,000 rows/s into QuestDB and >= 70%
of the ceiling; three writers faster than one.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

from bench.common import Offsets, Servers, cpu_seconds, print_table, setting, temporary_stack, write_result
from pipeline.servers import ServersUnavailable
from tests.helpers import stop_process

TOPIC = "temperature"
GROUP = f"store-writer.{TOPIC}"
TARGETS = {"sqlite": 300_000, "questdb": 400_000, "kafka+questdb": 400_000}  # rows/s with one writer
CEILING_SHARE = 0.7  # into QuestDB, one writer reaches at least this share of the client alone


def messages(n: int, rooms: int, prefix: str) -> tuple[list[bytes], list[bytes]]:
    """n valid temperature readings as (keys, values): `rooms` rooms, 1 s apart, newest a minute ago."""
    per_room = -(-n // rooms)
    base = int(time.time() * 1000) - per_room * 1000 - 60_000
    names = [f"{prefix}{r:04d}" for r in range(rooms)]
    keys, values = [], []
    for i in range(per_room):
        ts = base + i * 1000
        for r in range(min(rooms, n - len(values))):
            keys.append(names[r].encode())
            values.append(f'{{"ts":{ts},"room":"{names[r]}","value":{18 + r % 7 + (i % 500) / 100:.2f},"unit":"°C"}}'.encode())
    return keys, values


def produce(bootstrap: str, keys: list[bytes], values: list[bytes]) -> dict:
    """Put the messages on the topic, each under its key."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": False, "acks": "all", "log_level": 3,
    })
    started = time.monotonic()
    for sent, (key, value) in enumerate(zip(keys, values)):
        while True:
            try:
                producer.produce(TOPIC, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if sent % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} messages were not delivered to the broker")
    elapsed = time.monotonic() - started
    return {"messages": len(values), "seconds": round(elapsed, 2), "msgs_per_s": round(len(values) / elapsed)}


def ceiling(servers: Servers, n: int, rooms: int, args) -> dict:
    """The QuestDB client alone sending the same rows as a writer would: one long-lived Sender,
    a DataFrame of WRITER_BATCH_SIZE rows and a flush each, frames built beforehand. Nothing of
    Kafka, validation or our store's checks: the most a writer could reach on this machine."""
    from questdb import Sender

    from pipeline.schema import TOPICS, validate_batch
    from pipeline.store import open_store
    from pipeline.store.questdb import ilp_frame, sender_conf

    spec = TOPICS[TOPIC]
    servers.reset()
    keys, values = messages(n, rooms, "room-")
    now = int(time.time() * 1000)
    size = args.batch_size
    frames = [ilp_frame(spec, validate_batch(spec, values[i:i + size], keys[i:i + size], now)[0], now) for i in range(0, n, size)]
    store_url = servers.settings["store_url"]
    with open_store(store_url, servers.settings["QUESTDB_PG_URL"]) as store:
        store.ensure_tables()
    cpu0 = time.process_time()
    with Sender.from_conf(sender_conf(store_url)) as sender:
        started = time.monotonic()
        marks = {}
        for k, frame in enumerate(frames):
            sender.dataframe(frame, table_name=spec.name, symbols=[spec.key, *spec.text], at="ts")
            sender.flush()
            done = (k + 1) * size
            for mark in (0.1, 0.9):
                if mark not in marks and done >= mark * n:
                    marks[mark] = (time.monotonic(), done)
        elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    (t_lo, n_lo), (t_hi, n_hi) = marks[0.1], marks[0.9]
    return {"rows": n, "rows_per_s": round((n_hi - n_lo) / (t_hi - t_lo)), "rows_per_s_overall": round(n / elapsed),
            "client_cpu_cores": round(cpu / elapsed, 2)}


def consume_alone(servers: Servers, n: int, rooms: int, args) -> dict:
    """The Kafka client alone: one consumer with the writers' settings (pipeline.kafka.consumer)
    taking the same messages in batches of WRITER_BATCH_SIZE and doing nothing with them. The
    most one writer's main thread could take from this broker on this machine, before validating,
    building the ILP frame and committing."""
    from pipeline import kafka

    servers.reset()
    with temporary_stack(args.keep, **servers.settings) as stack, stack.broker(partitions=args.partitions):
        produce(stack.bootstrap, *messages(n, rooms, "room-"))
        consumer = kafka.consumer(stack.config(), "bench-consume-alone", "bench-consume-alone", offset_reset="earliest")
        consumer.subscribe([TOPIC])
        got, marks, started = 0, {}, time.monotonic()
        try:
            while got < n:
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"the consumer alone took {got:,} of {n:,} messages in {args.timeout:.0f} s")
                got += len(consumer.consume(args.batch_size, timeout=1))
                for mark in (0.1, 0.9):
                    if mark not in marks and got >= mark * n:
                        marks[mark] = (time.monotonic(), got, time.process_time())
        finally:
            consumer.close()
    (t_lo, n_lo, c_lo), (t_hi, n_hi, c_hi) = marks[0.1], marks[0.9]
    return {"rows": n, "rows_per_s": round((n_hi - n_lo) / (t_hi - t_lo)), "client_cpu_cores": round((c_hi - c_lo) / (t_hi - t_lo), 2),
            "cpu_us_per_message": round((c_hi - c_lo) / (n_hi - n_lo) * 1e6, 2)}


def measure(backend: str, servers: Servers, writers: int, n: int, rooms: int, args) -> dict:
    from pipeline.schema import TOPICS

    env = {"WRITER_BATCH_SIZE": str(args.batch_size), "WRITER_FLUSH_MS": str(args.flush_ms)}
    servers.reset()
    with temporary_stack(args.keep, **servers.settings, **env) as stack, stack.broker(partitions=args.partitions) as broker:
        broker_pid = broker.pid if broker else servers.broker_pid
        store = stack.open_store()
        try:
            store.ensure_tables()
            spec = TOPICS[TOPIC]
            before = store.count(spec)
            produced = produce(stack.bootstrap, *messages(n, rooms, "room-"))
            offsets = Offsets(stack.bootstrap, TOPIC, GROUP)
            high = offsets.high()
            spawned = time.monotonic()
            procs = [stack.spawn("pipeline.run", "consumer", TOPIC, log_name=f"writer-{i}") for i in range(writers)]
            pids = [p.pid for p in procs]

            def check_alive():
                for i, p in enumerate(procs):
                    if p.poll() is not None:
                        raise RuntimeError(f"writer {i} exited with {p.returncode}:\n{stack.log(f'writer-{i}')[-2000:]}")

            # Overall clock: from the first visible row to all N stored.
            deadline = spawned + args.timeout
            while (have := store.count(spec) - before) == 0:
                check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("no row reached the store in time")
                time.sleep(0.005)
            t0, n0 = time.monotonic(), have
            cpu0, broker_cpu0 = cpu_seconds(pids), cpu_seconds([broker_pid])
            bench_cpu0 = time.process_time()
            # Sustained window: committed offsets (written, then committed) crossing 10% and 90% of N.
            lo_mark, hi_mark = 0.1 * high, 0.9 * high
            lo = hi = None  # (time, committed, writer cpu, broker cpu)
            counts = 0
            while True:
                committed = offsets.committed()
                now = time.monotonic()
                if lo is None and committed >= lo_mark:
                    lo = (now, committed, cpu_seconds(pids), cpu_seconds([broker_pid]))
                if hi is None and committed >= hi_mark:
                    hi = (now, committed, cpu_seconds(pids), cpu_seconds([broker_pid]))
                # Counted once everything is committed: a count scans the table, and beside the
                # writers every second it cost them throughput and held WAL checkpoints back.
                if committed >= high:
                    have, counts = store.count(spec) - before, counts + 1
                    if have >= n:
                        break
                check_alive()
                if now > deadline:
                    raise RuntimeError(f"only {committed:,} of {high:,} messages committed after {args.timeout}s")
                time.sleep(0.01)
            t1 = time.monotonic()
            cpu = cpu_seconds(pids) - cpu0
            broker_cpu = cpu_seconds([broker_pid]) - broker_cpu0
            bench_cpu = time.process_time() - bench_cpu0
            elapsed = t1 - t0
            for p in procs:
                stop_process(p)
            final = store.count(spec) - before
        finally:
            store.close()
        if lo is None or hi is None or hi[0] <= lo[0]:  # too few polls in a very short run
            lo, hi = (t0, n0, cpu0, broker_cpu0), (t1, n, cpu0 + cpu, broker_cpu0 + broker_cpu)
        window = hi[0] - lo[0]
        sustained = (hi[1] - lo[1]) / window
        return {
            "backend": backend, "writers": writers, "rows": n, "rows_stored": final,
            "rows_per_s": round(sustained), "sustained_window_s": round(window, 3),
            "writer_cpu_cores": round((hi[2] - lo[2]) / window, 2), "broker_cpu_cores": round((hi[3] - lo[3]) / window, 2),
            "writer_cpu_s_per_100k_rows": round((hi[2] - lo[2]) / (hi[1] - lo[1]) * 100_000, 3),
            "writer_cpu_us_per_row": round((hi[2] - lo[2]) / (hi[1] - lo[1]) * 1e6, 2),
            "rows_per_s_overall": round((n - n0) / elapsed), "seconds_overall": round(elapsed, 3), "rows_at_clock_start": n0,
            "writer_cpu_cores_overall": round(cpu / elapsed, 2), "broker_cpu_cores_overall": round(broker_cpu / elapsed, 2),
            "first_row_after_s": round(t0 - spawned, 2), "bench_poller_cpu_cores": round(bench_cpu / elapsed, 3),
            "store_counts": counts, "produce": produced, "high_watermark_sum": high,
        }



def profile(store_url: str | None, n: int, rooms: int, args) -> None:
    """One StoreWriter in this process under cProfile, fed the same way; prints where time goes.

    It writes in this process too (`InProcess`, where the daemon writes behind, in a process of
    its own), so the store's share shows in the same profile."""
    import cProfile
    import pstats

    from pipeline import writer as writer_mod
    from pipeline.schema import TOPICS
    from pipeline.store import open_store
    from pipeline.write_behind import InProcess

    spec = TOPICS[TOPIC]
    env = {"WRITER_BATCH_SIZE": str(args.batch_size), "WRITER_FLUSH_MS": str(args.flush_ms)}
    with temporary_stack(args.keep, store_url, **env) as stack, stack.broker(partitions=args.partitions):
        produce(stack.bootstrap, *messages(n, rooms, "room-"))
        cfg = stack.config()
        store = open_store(cfg.store_url)
        store.ensure_tables()
        watcher_store = open_store(cfg.store_url)
        stop_event = threading.Event()
        done = {}

        def watch():
            while not stop_event.is_set():
                if watcher_store.count(spec) >= n:
                    done["t"] = time.monotonic()
                    stop_event.set()
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        w = writer_mod.StoreWriter(cfg, spec, InProcess(store), stop_event)
        prof = cProfile.Profile()
        started = time.monotonic()
        prof.enable()
        w.run()
        prof.disable()
        elapsed = done.get("t", time.monotonic()) - started
        store.close()
        watcher_store.close()
        print(f"\nin-process writer under cProfile: {n} rows in {elapsed:.1f}s incl. group join ({n / elapsed:,.0f} rows/s, slowed by the profiler)")
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(25)


def decoders(n: int = 5000, repeats: int = 7) -> dict:
    """µs per message to take a batch of n temperature messages from bytes to store columns, each way."""
    import statistics

    import msgspec
    from pydantic import TypeAdapter

    from pipeline import schema

    spec = schema.TOPICS[TOPIC]
    now = int(time.time() * 1000)
    values = [
        f'{{"ts":{now - 60_000 - i},"room":"room-{i % 200:04d}","value":{18 + (i % 500) / 100:.2f},"unit":"°C"}}'.encode()
        for i in range(n)
    ]
    keys = [f"room-{i % 200:04d}".encode() for i in range(n)]
    joined = b"[" + b",".join(values) + b"]"
    adapter = TypeAdapter(list[schema.Temperature])
    array_decoder = msgspec.json.Decoder(list[schema._TemperatureRow])

    ways = {
        # what the writer did before: one pydantic model per message, then columns from the models
        "pydantic model_validate_json per message": lambda: schema.Batch.from_rows(spec, [schema.validate(spec, v, k, now) for v, k in zip(values, keys)]),
        # pydantic over the batch at once: one JSON array, a list of models, then columns
        "pydantic TypeAdapter(list[Temperature]) over the batch": lambda: schema.Batch.from_rows(spec, adapter.validate_json(joined)),
        # msgspec over the joined array: fastest, but a message split across the commas could pass
        "msgspec Decoder(list[Row]) over the joined batch": lambda: schema.Batch.from_rows(spec, array_decoder.decode(joined)),
        # what the writer does now: msgspec per message in a C loop, checks on the columns
        "msgspec validate_batch (chosen)": lambda: schema.validate_batch(spec, values, keys, now),
    }
    out = {}
    for name, fn in ways.items():
        fn()
        times = []
        for _ in range(repeats):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        out[name] = round(statistics.median(times) / n * 1e6, 3)
    return out


def costs(n: int = 5000, batches: int = 60) -> dict:
    """CPU µs per row of each step after consuming, in this process: validation, SQLite write, ILP encoding."""
    import tempfile

    from questdb._client import Buffer  # the ILP buffer a Sender encodes into (questdb.ingress warns)

    from pipeline import schema
    from pipeline.store import open_store
    from pipeline.store.questdb import ilp_frame

    spec = schema.TOPICS[TOPIC]
    now = int(time.time() * 1000)
    total = n * batches
    per_room = -(-total // 200)
    base = now - per_room * 1000 - 60_000
    values = [
        f'{{"ts":{base + (i // 200) * 1000},"room":"room-{i % 200:04d}","value":{18 + (i % 500) / 100:.2f},"unit":"°C"}}'.encode()
        for i in range(total)
    ]
    keys = [f"room-{i % 200:04d}".encode() for i in range(total)]
    out = {}
    t = time.process_time()
    parts = [schema.validate_batch(spec, values[i:i + n], keys[i:i + n], now)[0] for i in range(0, total, n)]
    out["validate_batch"] = (time.process_time() - t) / total * 1e6
    with tempfile.TemporaryDirectory() as tmp, open_store(f"sqlite:///{tmp}/costs.db") as store:
        store.ensure_tables()
        t = time.process_time()
        for b in parts:
            store.write(spec, b, now)
        out["sqlite_write"] = (time.process_time() - t) / total * 1e6
        t = time.process_time()
        for b in parts[:10]:  # all of it again: the redelivery path
            store.write(spec, b, now)
        out["sqlite_write_redelivered"] = (time.process_time() - t) / (10 * n) * 1e6
    t = time.process_time()
    for b in parts:
        buf = Buffer(protocol_version=2)
        buf.dataframe(ilp_frame(spec, b, now), table_name=spec.name, symbols=[spec.key, *spec.text], at="ts")
    out["questdb_ilp_encode"] = (time.process_time() - t) / total * 1e6
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100k messages (unless --messages is given)")
    p.add_argument("--messages", type=int, help="messages pre-produced per run (default 2,000,000: several seconds of drain at the target rate; 100,000 with --quick)")
    p.add_argument("--rooms", type=int, default=200, help="distinct rooms (message keys), default 200")
    p.add_argument("--writers", default="1,3", help="writer counts to run, comma-separated (default 1,3)")
    p.add_argument("--backends", default="sqlite,questdb", help="of sqlite, questdb, kafka+questdb (default sqlite,questdb)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the topic (default 3)")
    p.add_argument("--batch-size", type=int, default=setting("WRITER_BATCH_SIZE"), help="WRITER_BATCH_SIZE for the writers (default: the product's)")
    p.add_argument("--flush-ms", type=int, default=setting("WRITER_FLUSH_MS"), help="WRITER_FLUSH_MS for the writers (default: the product's)")
    p.add_argument("--repeat", type=int, default=3, help="runs per backend and writer count; the median is reported (default 3)")
    p.add_argument("--timeout", type=float, default=600, help="give up on a run after this many seconds")
    p.add_argument("--profile", action="store_true", help="also profile one in-process writer (SQLite) with cProfile")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, store) for inspection")
    p.add_argument("--costs", action="store_true", help="only time the per-row steps and the decoders in this process (no broker)")
    args = p.parse_args()
    steps, ways = costs(), decoders()
    print_table(["step", "CPU µs/row"], list(steps.items()), title="Per-row cost of each step after consuming (this process, 5,000-row batches)")
    print_table(["bytes -> columns", "CPU µs/message"], list(ways.items()), title="Decoding and validating a batch of 5,000 temperature messages")
    if args.costs:
        write_result("ingest-costs", {"steps_us_per_row": steps, "decoders_us_per_message": ways})
        return
    n = args.messages or (100_000 if args.quick else 2_000_000)
    writer_counts = [int(w) for w in args.writers.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    results, rows = [], []
    for backend in backends:
        try:
            with Servers(backend) as servers:
                ceiling_rate = None
                runs = []
                for k in range(args.repeat):
                    print(f"running the Kafka consumer alone, {n:,} messages, run {k + 1} of {args.repeat} ...", flush=True)
                    runs.append(consume_alone(servers, n, args.rooms, args))
                consume_rate = statistics.median(r["rows_per_s"] for r in runs)
                results.append({"backend": backend, "writers": 0, "consumer_alone": True, "rows_per_s_median": consume_rate, "runs": runs})
                rows.append([backend, "consumer alone", f"{consume_rate:,.0f}", " · ".join(f"{r['rows_per_s']:,}" for r in runs),
                             statistics.median(r["client_cpu_cores"] for r in runs), statistics.median(r["cpu_us_per_message"] for r in runs),
                             None, None, "what one writer's consumer could take"])
                if servers.questdb:
                    runs = []
                    for k in range(args.repeat):
                        print(f"running the QuestDB client alone, {n:,} rows, run {k + 1} of {args.repeat} ...", flush=True)
                        runs.append(ceiling(servers, n, args.rooms, args))
                    ceiling_rate = statistics.median(r["rows_per_s"] for r in runs)
                    results.append({"backend": backend, "writers": 0, "ceiling": True, "rows_per_s_median": ceiling_rate, "runs": runs})
                    rows.append([backend, "client alone", f"{ceiling_rate:,.0f}", " · ".join(f"{r['rows_per_s']:,}" for r in runs),
                                 statistics.median(r["client_cpu_cores"] for r in runs), None, None, None, "the ceiling"])
                for writers in writer_counts:
                    runs = []
                    for k in range(args.repeat):
                        print(f"running {backend} with {writers} writer(s), {n:,} messages, run {k + 1} of {args.repeat} ...", flush=True)
                        runs.append(measure(backend, servers, writers, n, args.rooms, args))
                    # Two processes per writer on two cores swing from run to run: the median is compared.
                    rate = statistics.median(r["rows_per_s"] for r in runs)
                    target = TARGETS[backend] if writers == 1 else None
                    share = round(rate / ceiling_rate, 2) if ceiling_rate else None
                    met = None if target is None else rate >= target and (share is None or share >= CEILING_SHARE)
                    results.append({"backend": backend, "writers": writers, "rows_per_s_median": rate, "target_rows_per_s": target,
                                    "share_of_ceiling": share, "target_met": met, "runs": runs})
                    verdict = "" if target is None else ("met" if met else "MISSED") + f" (>= {target:,}"
                    if target and share is not None:
                        verdict += f" and >= {CEILING_SHARE:.0%} of the ceiling: {share:.0%}"
                    elif share is not None:
                        verdict = f"{share:.0%} of the ceiling"
                    med = {key: statistics.median(r[key] for r in runs) for key in ("writer_cpu_cores", "writer_cpu_us_per_row", "broker_cpu_cores")}
                    rows.append([backend, writers, f"{rate:,.0f}", " · ".join(f"{r['rows_per_s']:,}" for r in runs), med["writer_cpu_cores"],
                                 med["writer_cpu_us_per_row"], med["broker_cpu_cores"], f"{runs[0]['produce']['msgs_per_s']:,}",
                                 f"{verdict})" if target else verdict])
        except ServersUnavailable as exc:
            for writers in writer_counts:
                results.append({"backend": backend, "writers": writers, "skipped": str(exc)})
                rows.append([backend, writers, "-", None, None, None, None, None, f"skipped: {exc}"])
    print_table(
        ["backend", "writers", "rows/s", "each run", "writer CPU", "writer µs/row", "broker CPU", "produce msg/s", "target (1 writer)"],
        rows, title=f"Ingest of {n:,} temperature messages ({args.rooms} rooms, {args.partitions} partitions, batch {args.batch_size}, flush {args.flush_ms} ms)",
    )
    print("rows/s: sustained, while the committed rows went from 10% to 90% of N, the median of the runs; CPU in cores over the same")
    print("window (1.0 = one core busy), writers with their write processes; each run's figures, overall rate included, are in the JSON")
    params = {"messages": n, "rooms": args.rooms, "partitions": args.partitions, "writer_batch_size": args.batch_size,
              "writer_flush_ms": args.flush_ms, "writers": writer_counts, "backends": backends, "repeat": args.repeat}
    write_result("ingest", {"runs": results, "targets_rows_per_s_one_writer": TARGETS, "steps_us_per_row": steps, "decoders_us_per_message": ways}, params)
    if args.profile:
        profile(None, n, args.rooms, args)


if __name__ == "__main__":
    main()
