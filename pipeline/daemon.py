"""What every daemon shares: logging, a stop signal, retry back-off and periodic reports."""
from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import select
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


class Stop:
    """A request to stop, safe to make from a signal handler: it takes no lock.

    A `threading.Event` is not: its `set()` takes the lock that `wait()` holds, and Python runs a
    handler on the main thread between two bytecodes, possibly inside that `wait()`, which then
    waits forever for a lock its own thread holds. So this is a flag and a pipe (the self-pipe
    trick behind `signal.set_wakeup_fd`): `set()` assigns the flag and writes a byte, and a wait
    is a `poll()` on the pipe, which the byte wakes and leaves readable for every later wait.
    Same `is_set()` / `wait()` / `set()` as an Event, so a test may pass an Event instead.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False
        self.reason = ""

    def set(self, reason: str = "asked to stop") -> None:
        if not self._set:
            self.reason = reason
        self._set = True
        try:
            os.write(self._w, b"!")
        except BlockingIOError:  # the pipe is full of earlier requests: already readable
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True once stopped, else False after `timeout` seconds (None: no limit)."""
        if self._set:
            return True
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return self._set


def stop_event(name: str) -> Stop:
    """A Stop set by SIGINT or SIGTERM (or the death of the supervisor that started us, where
    the kernel cannot kill us with it: see `watch_supervisor`)."""
    stop = Stop()
    log = logging.getLogger(name)

    def on_signal(signum, _frame):
        stop.set(f"{signal.Signals(signum).name} received")  # no logging here: it takes locks

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    watch_supervisor(log, lambda: stop.set("the supervisor is gone"))

    def announce():
        stop.wait()
        log.info("%s, stopping", stop.reason)

    threading.Thread(target=announce, name="stop-log", daemon=True).start()
    return stop


# prctl(2) resolved once, in the parent: a preexec_fn runs between fork and exec, where loading a
# library could deadlock on a lock another thread held at the fork.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the parent watch is all there is
    _prctl = None
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    Called in a child before it executes (`dies_with_us`), or by a forked child that executes
    nothing (gunicorn's worker). If `parent` has already died, the child would wait for a death
    that happened: it exits at once instead. The kernel's "parent" is the thread that started
    the child: start children from a thread that lives as long as the process (the main thread).
    """
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def dies_with_us():
    """A `preexec_fn` for subprocess.Popen: the child is killed when this process dies.

    A preexec_fn runs in the child between fork and exec, where a lock another thread held at
    the fork stays held; this one takes none: it calls the prctl(2) resolved at import, getppid(2)
    and, if need be, _exit(2) (as Ray does for its workers).
    """
    return functools.partial(die_with_parent, os.getpid())


def watch_supervisor(log: logging.Logger, on_gone) -> None:
    """Call `on_gone` once if the supervisor that started this process dies.

    Children run in their own session (so Ctrl-C reaches only the supervisor); if the supervisor
    is killed outright, they must not live on as orphans. On Linux the kernel kills them with it
    (the supervisor starts them with `dies_with_us`); the watch is for where it cannot.
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
