"""The ring buffer behind the live websocket: cursors, gaps and epochs; the live buckets."""
import math
import threading

import pandas as pd
import pytest

from dash_app.app import same_origin
from dash_app.figures import envelope_path
from dash_app.history import live_buckets
from dash_app.live import Buckets, Gap, Ring
from pipeline.schema import TOPICS


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


@pytest.mark.parametrize(
    "origin, host, allowed",
    [
        (None, "127.0.0.1:8050", True),
        ("http://127.0.0.1:8050", "127.0.0.1:8050", True),
        ("https://dash.example", "dash.example", True),
        ("http://127.0.0.1:8050", "127.0.0.1", True),
        ("http://evil.example", "127.0.0.1:8050", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8050", False),
        ("https://dash.example", "dash.example:8443", False),
    ],
)
def test_live_socket_accepts_only_same_origin_pages(origin, host, allowed):
    assert same_origin(origin, host) is allowed


def test_buckets_keep_each_buckets_last_reading_and_envelope_with_a_provisional_tail():
    buckets = Buckets(500)
    assert buckets.add({"temperature": [[1000, "k", 20.0]]}) == {"temperature": {"k|value": [[1000], [20.0], 1]}}
    # Same bucket: the last reading replaces the tail; the bucket now spans 19-21: its low and high
    # at its start, low first (an even bucket).
    frame = buckets.add({"temperature": [[1100, "k", 21.0], [1200, "k", 19.0], [1300, "k", 20.5]]})
    assert frame == {"temperature": {"k|value": [[1300], [20.5], 1], "!envelope|k|value": [[1000] * 2, [19.0, 21.0], 2]}}
    # A new bucket closes the old one: its points become final; the new one spans nothing yet.
    frame = buckets.add({"temperature": [[1600, "k", 22.0], [1600, "k", 22.0]]})
    assert frame == {"temperature": {"k|value": [[1300, 1600], [20.5, 22.0], 1], "!envelope|k|value": [[1000] * 2, [19.0, 21.0], 0]}}
    assert buckets.add({"temperature": [[1300, "k", 5.0]]}) == {}  # a re-read older point changes nothing
    # An odd bucket goes high first: the envelope runs along the top from one bucket to the next.
    frame = buckets.add({"temperature": [[1700, "k", 23.0]]})
    assert frame["temperature"]["!envelope|k|value"] == [[1500] * 2, [23.0, 22.0], 2]


def test_a_live_windows_raw_history_is_cut_into_the_streams_buckets():
    spec = TOPICS["temperature"]
    rows = [[1000 + 37 * i, "k", 20 + (i * 7919 % 13) / 4] for i in range(200)]  # 7.4 s of readings 37 ms apart
    stream = Buckets(500).add({"temperature": rows})["temperature"]
    frame = live_buckets(pd.DataFrame(rows, columns=list(spec.series_columns)), spec, 500)
    # The same line points and the same envelope as the stream draws for these readings.
    assert [frame["ts"].tolist(), frame["value"].tolist()] == stream["k|value"][:2]
    assert list(envelope_path(frame["ts"], frame["value_min"], frame["value_max"], 500, math.inf)) == stream["!envelope|k|value"][:2]
    assert live_buckets(frame, spec, 500).equals(frame)  # buckets stay buckets


def test_slow_series_stay_raw_and_each_field_is_its_own_trace():
    buckets = Buckets(500)
    frame = buckets.add({"systemusage": [[1000, "d", 5.0, 10, 20], [2000, "d", 6.0, 11, 20]]})
    assert frame["systemusage"]["d|cpu_percent"] == [[1000, 2000], [5.0, 6.0], 1]
    assert frame["systemusage"]["d|memory_used"] == [[1000, 2000], [10, 11], 1]


def test_a_cursor_that_is_no_number_of_ours_is_a_gap():
    ring = Ring(3)
    for cursor in (f"{ring.epoch}:{'9' * 60_000}", f"{ring.epoch}:-1", f"{ring.epoch}:x", "nonsense"):
        with pytest.raises(Gap):
            ring.parse(cursor)
