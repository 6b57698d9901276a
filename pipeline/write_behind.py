"""A store writer's writes, in a process of their own: the writer consumes and validates the next
batch while the store takes this one.

A thread cannot overlap them. SQLite's `executemany` lets go of the GIL at every row (and a
QuestDB write at its request), and getting it back from a thread busy decoding the next batch
takes a switch interval each time, so a batch's write grew from milliseconds to seconds
(docs/performance.md). A second process has a GIL of its own. For the same reason the writer
talks to it over a socket from its own thread, not through `concurrent.futures`, whose helper thread would
wait for the GIL at every hand-over: a batch goes across pickled as the store prepared it in the
writer (`Store.prepare`: QuestDB's ILP frame, SQLite's columns), and the answer comes back as
None or the error.

One write at a time, in order, so a later batch's reading of a (ts, key) still wins. The writer
commits a batch's offsets only once its write has succeeded; a store error comes back as the
`StoreUnavailable` it was, and a write process that died (killed, out of memory) as one too,
after which the next call starts a new process.

`InProcess` offers the same over a store object in this process: for tests that put a failing
store in the writer's way, and for profiling.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import Protocol, Self

from pipeline.config import Config
from pipeline.daemon import dies_with_us, setup_logging, watch_parent
from pipeline.schema import TOPICS, Batch, Topic
from pipeline.store import Store, StoreUnavailable, open_store, store_type

log = logging.getLogger("write-behind")


class Write(Protocol):
    """A write handed to the store."""

    def done(self) -> bool:
        """Finished, well or not; does not wait."""

    def wait(self, timeout: float) -> bool:
        """Finished within `timeout` seconds."""

    def result(self) -> None:
        """Wait until it is finished; raise its error (StoreUnavailable when the store refused it)."""


class Writes(Protocol):
    """Where a store writer's batches go."""

    def ensure_tables(self) -> None: ...

    def submit(self, spec: Topic, batch: Batch, received_at_ms: int) -> Write: ...


class Finished:
    """A write that is over already, with its error if it failed."""

    def __init__(self, error: Exception | None = None):
        self.error = error

    def done(self) -> bool:
        return True

    def wait(self, timeout: float) -> bool:
        return True

    def result(self) -> None:
        if self.error is not None:
            raise self.error


class InProcess:
    """Writes to a store object in this process, before `submit` returns."""

    def __init__(self, store: Store):
        self.store = store

    def ensure_tables(self) -> None:
        self.store.ensure_tables()

    def submit(self, spec: Topic, batch: Batch, received_at_ms: int) -> Finished:
        try:
            self.store.write(spec, batch, received_at_ms)
        except StoreUnavailable as exc:
            return Finished(exc)
        return Finished()


class WriteBehind:
    """The store STORE_URL names, opened and written in one child process, a call at a time."""

    def __init__(self, cfg: Config):
        self.urls = (cfg.store_url, cfg.questdb_pg_url)  # what the write process opens: open_store(*urls)
        self.prepare = store_type(cfg.store_url).prepare  # here, beside the write in flight
        self.log_level = cfg.log_level
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.pending: _Pending | None = None  # the call in flight

    def ensure_tables(self) -> None:
        self._call("ensure_tables").result()

    def submit(self, spec: Topic, batch: Batch, received_at_ms: int) -> Write:
        return self._call("write", spec.name, self.prepare(spec, batch, received_at_ms), received_at_ms)

    def _call(self, *request) -> Write:
        if self.pending is not None and not self.pending.done():
            raise RuntimeError("one write at a time: the last one is still in flight")
        if self.process is not None and self.process.poll() is not None:
            self._died()  # between two writes: nothing was lost, and a new process takes this one
        if self.process is None:
            self._start()
        try:
            self.conn.send(request)
        except OSError:
            return Finished(self._died())
        self.pending = _Pending(self)
        return self.pending

    def _start(self) -> None:
        # A plain child process over a socket pair, not multiprocessing's: its spawn also starts a
        # resource tracker, which outlives the writer for a moment as an orphan; and a fork would
        # copy librdkafka's threads half-way. The settings go over the socket, not the command
        # line, where a password in STORE_URL would show.
        self.conn, theirs = Pipe()
        self.process = subprocess.Popen([sys.executable, "-m", "pipeline.write_behind", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        preexec_fn=dies_with_us())  # noqa: PLW1509 - see dies_with_us
        theirs.close()
        self.conn.send((*self.urls, self.log_level, os.getpid()))
        log.info("store writes go to process %d", self.process.pid)

    def _died(self) -> StoreUnavailable:
        log.warning("the store's write process died (exit code %s); the next write starts a new one", self.process.poll())
        self.conn.close()
        self.process.wait(5)
        self.process = None
        return StoreUnavailable("the store's write process died")

    def _answer(self, timeout: float | None) -> tuple[bool, Exception | None]:
        """(whether the call in flight has finished, its error)."""
        if not self.conn.poll(timeout):
            return False, None
        try:
            return True, self.conn.recv()
        except (EOFError, OSError):
            return True, self._died()

    def close(self) -> None:
        if self.process is None:
            return
        if self.pending is not None and not self.pending.done():
            self.pending.wait(30)
        try:
            self.conn.send(None)
            self.process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.conn.close()
        self.process = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pending:
    """A call to the write process; its answer is read from the pipe when it is asked for."""

    def __init__(self, owner: WriteBehind):
        self.owner, self.finished, self.error = owner, False, None

    def done(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None) -> bool:
        if not self.finished:
            self.finished, self.error = self.owner._answer(timeout)
        return self.finished

    def result(self) -> None:
        self.wait(None)
        if self.error is not None:
            raise self.error


# ---- in the write process ---------------------------------------------------------------------
def _serve(conn: Connection) -> None:
    try:
        store_url, pg_url, log_level, parent = conn.recv()
    except EOFError:
        return  # the writer died before it said what to open
    setup_logging(log_level)
    # Ctrl-C in a terminal reaches the whole process group: the writer decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A writer killed outright leaves no write process behind (its answer would go nowhere).
    watch_parent(parent, log, lambda: os._exit(0), "store writer")
    with open_store(store_url, pg_url) as store:
        try:
            while (request := conn.recv()) is not None:
                conn.send(_handle(store, request))
        except (EOFError, ConnectionError):  # the writer was killed outright: nobody to answer
            log.warning("store writer %s is gone, stopping", parent)


def _handle(store, request: tuple) -> Exception | None:
    """Carry out one request: None when done, else the error to raise in the writer."""
    try:
        if request[0] == "ensure_tables":
            store.ensure_tables()
        else:
            _, topic, prepared, received_at_ms = request
            store.write_prepared(TOPICS[topic], prepared, received_at_ms)
        return None
    except StoreUnavailable as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a defect: the writer stops on it, with this traceback
        return RuntimeError("".join(traceback.format_exception(exc)))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
