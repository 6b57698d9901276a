"""What every daemon shares: logging, a stop signal, retry back-off and periodic reports."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

PARENT_ENV = "PIPELINE_SUPERVISOR_PID"


def setup_logging(level: str) -> None:
    """Log lines at `level` (LOG_LEVEL) and up to stderr, in one format for every process."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)-22s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def stop_event(name: str) -> threading.Event:
    """An event set by SIGINT, SIGTERM, or the death of the supervisor that started us."""
    stop = threading.Event()
    log = logging.getLogger(name)

    def on_signal(signum, _frame):
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    watch_supervisor(log, stop.set)
    return stop


def watch_supervisor(log: logging.Logger, on_gone) -> None:
    """Call `on_gone` once if the supervisor that started this process dies.

    Children run in their own session (so Ctrl-C reaches only the supervisor); if the supervisor
    is killed outright, they must not live on as orphans.
    """
    parent = os.environ.get(PARENT_ENV)
    if parent:
        watch_parent(int(parent), log, on_gone, "supervisor")


def watch_parent(parent: int, log: logging.Logger, on_gone, name: str) -> None:
    """Call `on_gone` once, from a thread, when `parent` (the pid of this process's parent, `name`
    in the log line) is no longer its parent: it died."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("%s %s is gone, stopping", name, parent)
        on_gone()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def backoff(attempt: int, cap: float = 10.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): 0.5, 1, 2, 4 ... up to `cap`."""
    return min(cap, 0.5 * 2**attempt)


class Every:
    """True once per `seconds` when asked: paces the one-line progress reports."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last = time.monotonic()

    def __call__(self) -> float | None:
        """The seconds elapsed since the last report if one is due, else None."""
        now = time.monotonic()
        if now - self.last < self.seconds:
            return None
        elapsed, self.last = now - self.last, now
        return elapsed
