"""The store's write process: writes land, errors come back, a dead process is replaced, none is orphaned
or leaves a traceback."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from pipeline.config import load
from pipeline.schema import TOPICS, Temperature, as_batch
from pipeline.store import StoreUnavailable, open_store
from pipeline.write_behind import WriteBehind
from tests.helpers import on_each_backend, wait_for

T = TOPICS["temperature"]
BASE = 1_760_000_000_000


def behind(url: str) -> WriteBehind:
    return WriteBehind(load({"STORE_URL": url}))


def batch(n: int, start: int = 0):
    return as_batch(T, [Temperature(ts=BASE + i, room="kitchen", value=20.5, unit="°C") for i in range(start, start + n)])


def test_batches_are_written_by_a_process_of_their_own_in_order(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    with behind(url) as writes, open_store(url) as store:
        writes.ensure_tables()
        assert writes.process.pid != os.getpid()  # a process of its own
        first = writes.submit(T, batch(300), 1)
        first.result()
        # The same (ts, key) again with another value: the later batch wins.
        later = as_batch(T, [Temperature(ts=BASE, room="kitchen", value=30.0, unit="°C")])
        writes.submit(T, later, 2).result()
        assert store.count(T) == 300
        assert store.since(T, BASE, BASE + 1).value.tolist() == [30.0]
    assert writes.process is None


def test_a_store_error_comes_back_as_store_unavailable(tmp_path):
    (tmp_path / "store.db").write_bytes(b"not a database" * 1000)
    with behind(f"sqlite:///{tmp_path}/store.db") as writes:
        with pytest.raises(StoreUnavailable, match="file is not a database"):
            writes.ensure_tables()
        with pytest.raises(StoreUnavailable, match="file is not a database"):
            writes.submit(T, batch(10), 1).result()


def test_a_write_process_that_died_is_reported_and_replaced(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    with behind(url) as writes, open_store(url) as store:
        writes.ensure_tables()
        big = batch(100_000)
        first = writes.process
        write = writes.submit(T, big, 1)
        os.kill(first.pid, signal.SIGKILL)  # in the middle of that write
        with pytest.raises(StoreUnavailable, match="write process died"):
            write.result()
        writes.submit(T, big, 1).result()  # the writer's retry, in a new process
        second = writes.process
        assert second.pid != first.pid
        os.kill(second.pid, signal.SIGKILL)  # between two writes
        second.wait(10)
        writes.submit(T, batch(100, start=100_000), 1).result()
        assert writes.process.pid != second.pid
        assert store.count(T) == 100_100


@on_each_backend
def test_a_writer_killed_outright_leaves_no_write_process_behind(stack, broker):
    writer = stack.spawn("pipeline.run", "consumer", "temperature", log_name="writer")
    try:
        def write_process():
            kids = [p for p in psutil.Process(writer.pid).children() if "pipeline.write_behind" in p.cmdline()]
            return kids[0] if kids else None

        child = wait_for(write_process, 30, "the writer's write process")
        stack.wait_log("writer", "consuming temperature", writer, 30)  # its tables are made: the write process waits for work
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)

        def gone() -> bool:
            try:
                return child.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_for(gone, 10, "the write process to exit")
        assert "Traceback" not in stack.log("writer"), stack.log("writer")[-2000:]
    finally:
        if writer.poll() is None:
            writer.kill()
