"""The dashboard's side of the /pipeline poller: starts it in a process of its own, keeps its
latest snapshot for the page, tells it where the live feed has read to, and starts it again if
it dies (dash_app/pipeline_poller.py says why it runs apart)."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from dash_app import pipeline_poller
from dash_app.live import FEED_TOPICS
from pipeline import kafka
from pipeline.config import Config
from pipeline.daemon import dies_with_us

log = logging.getLogger("dash_app.pipeline")
NOTE_S = 0.5  # how often the feed's positions are passed on (the poller reads them once a poll)
RESTART_S = 1.0  # pause before replacing a poller process that died young (one failing at start would spin)
YOUNG_S = 10.0


class PipelinePoller(threading.Thread):
    def __init__(self, cfg: Config, stopping: threading.Event, feed=None):
        """`feed`: this process's LiveFeed (its group and positions are passed on)."""
        super().__init__(name="pipeline-poller", daemon=True)
        self.cfg, self.stopping, self.feed = cfg, stopping, feed
        self.lock = threading.Lock()
        self.snapshot: dict[str, Any] = {"ok": None, "t": 0, "address": "", "error": "first poll pending"}
        self.version = 0
        self.restarts = 0
        self.pid: int | None = None  # the poller process's

    def latest(self) -> tuple[int, dict]:
        with self.lock:
            return self.version, self.snapshot

    def _take(self, snapshot: dict) -> None:
        with self.lock:
            self.snapshot, self.version = snapshot, self.version + 1

    def run(self) -> None:
        seed: dict = {}  # the last snapshot of the process before, which the next one carries on from
        while not self.stopping.is_set():
            # A fresh interpreter, not a fork: a fork would copy this process's librdkafka
            # threads' locks mid-use. Killed by the kernel if this process dies (dies_with_us).
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from dash_app.pipeline_poller import main; main(int(sys.argv[1]))",
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], preexec_fn=dies_with_us())  # noqa: PLW1509 - see dies_with_us
            self.pid, started = proc.pid, time.monotonic()
            theirs.close()
            conn = Connection(ours.detach())
            try:
                conn.send((self.cfg, seed))
                self._follow(conn)
            except (EOFError, OSError):
                pass  # it died: its end of the connection closed
            finally:
                conn.close()
                if proc.poll() is None:
                    proc.kill()  # we stop: it holds nothing that a stop would save
                proc.wait()
            if self.stopping.is_set():
                return
            self.restarts += 1
            seed = self.latest()[1]
            log.warning("pipeline poller process ended with code %s; starting another (the page keeps its last snapshot)",
                        proc.returncode)
            self._take({**self.snapshot, "ok": False, "poller_down": True, "t": int(time.time() * 1000),
                        "error": f"poller process ended with code {proc.returncode}: restarting",
                        "stale_since": self.snapshot.get("stale_since") or self.snapshot.get("t")})
            if time.monotonic() - started < YOUNG_S:
                self.stopping.wait(RESTART_S)

    def _follow(self, conn) -> None:
        """Take its snapshots and send it the feed's positions, until it dies or we stop."""
        noted = 0.0
        while not self.stopping.is_set():
            if conn.poll(NOTE_S / 2):
                self._take(conn.recv())
            if self.feed is not None and time.monotonic() - noted >= NOTE_S:
                noted = time.monotonic()
                conn.send(pipeline_poller.FeedNote(self.feed.group, dict(self.feed.positions),
                                                   [g for g in kafka.created_groups if g.startswith(pipeline_poller.DASHBOARD_PREFIX)],
                                                   FEED_TOPICS))
