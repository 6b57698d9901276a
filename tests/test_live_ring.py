"""The ring buffer behind the live websocket: cursors, gaps and epochs."""
import threading

import pytest

from dash_app.live import Gap, Ring


def test_since_returns_rows_after_the_cursor_grouped_by_topic():
    ring = Ring(10)
    ring.extend([("temperature", [1, "a", 20.0]), ("humidity", [1, "a", 50.0]), ("temperature", [2, "a", 21.0])])
    rows, head = ring.since(1)
    assert head == 3
    assert rows == {"humidity": [[1, "a", 50.0]], "temperature": [[2, "a", 21.0]]}
    assert ring.since(3) == ({}, 3)


def test_a_cursor_older_than_the_ring_is_a_gap_not_a_silent_hole():
    ring = Ring(3)
    ring.extend([("temperature", [i, "a", 20.0]) for i in range(5)])  # keeps seq 3..5
    assert ring.since(2)[1] == 5
    with pytest.raises(Gap):
        ring.since(1)


def test_cursor_from_another_process_is_a_gap():
    ring = Ring(3)
    assert ring.parse(ring.cursor()) == 0
    with pytest.raises(Gap):
        ring.parse("other:5")


def test_snapshot_holds_everything_and_ends_at_the_head():
    ring = Ring(2)
    ring.extend([("temperature", [i, "a", 20.0]) for i in range(4)])
    rows, head = ring.snapshot()
    assert head == 4 and [r[0] for r in rows["temperature"]] == [2, 3]


def test_wait_wakes_on_new_points():
    ring = Ring(5)
    threading.Timer(0.05, ring.extend, args=([("temperature", [1, "a", 1.0])],)).start()
    ring.wait(0, timeout=5)
    assert ring.head == 1
