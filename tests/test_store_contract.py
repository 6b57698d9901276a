"""One store contract, run against every backend.

SQLite always runs (a fresh file per test). QuestDB runs on the session's own server
(pipeline.servers, started by conftest's `questdb_server` when Java and Maven are here): every
table is dropped before each test.
QuestDB's WAL tables show committed rows 10-110 ms after write() returns, so every read that
depends on a write polls until the expected state shows up (`eventually`), with a deadline.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from dash_app.controls import SECONDS, window
from pipeline.config import Config
from pipeline.schema import TOPICS, Humidity, SystemUsage, Temperature, Topic
from pipeline.store import Store, StoreUnavailable, open_store
from pipeline.store.base import envelope_columns, range_bucket_ms

TEMP, HUM, SYS = TOPICS["temperature"], TOPICS["humidity"], TOPICS["systemusage"]
BASE = 1_773_137_000_000  # 2026-03-10T10:03:20Z, a multiple of 10 s
RECEIVED = BASE + 3_600_000
SEC = 1000
GIB = 2**30
DEADLINE_S = 5.0


# ---- backends --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "questdb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store("sqlite:///" + str(tmp_path / "contract.db"))
    else:
        server = request.getfixturevalue("questdb")
        s = open_store(server.store_url, server.pg_url)
    s.ensure_tables()
    yield s
    s.close()


# ---- helpers ---------------------------------------------------------------------------------


def eventually(read, ok, what: str, timeout: float = DEADLINE_S):
    """Poll `read()` until `ok(result)`; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = read()
        if ok(result):
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not reached within {timeout} s; last read:\n{result!r}")
        time.sleep(0.02)


def wait_count(store: Store, spec: Topic, n: int) -> None:
    eventually(lambda: store.count(spec), lambda c: c == n, f"{spec.name} count == {n}")


def temps(room: str, start: int, n: int, step: int = SEC, value=lambda i: 20.0 + i % 7) -> list[Temperature]:
    return [Temperature(ts=start + i * step, room=room, value=float(value(i)), unit="°C") for i in range(n)]


def usage(device: str, start: int, n: int, step: int = SEC) -> list[SystemUsage]:
    return [
        SystemUsage(ts=start + i * step, device=device, cpu_percent=float(5 + i % 90),
                    memory_used=(1 + i % 8) * GIB + 12345, memory_total=16 * GIB)
        for i in range(n)
    ]


def ms(series: pd.Series) -> list[int]:
    """Epoch milliseconds of a datetime64[ms, UTC] column."""
    return series.astype("int64").tolist()


def check_shape(frame: pd.DataFrame, spec: Topic, columns) -> None:
    assert list(frame.columns) == list(columns)
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"
    if "received_at" in frame:
        assert str(frame["received_at"].dtype) == "datetime64[ms, UTC]"
    assert pd.api.types.is_string_dtype(frame[spec.key])
    for c in columns[2:]:
        if c != "received_at" and c not in spec.text:
            assert frame[c].dtype == "float64", (c, frame[c].dtype)


def by_key(frame: pd.DataFrame, spec: Topic) -> dict[str, pd.DataFrame]:
    return {k: g.reset_index(drop=True) for k, g in frame.groupby(spec.key, sort=True)}


def RANGE_COLUMNS(spec: Topic) -> tuple[str, ...]:
    return ("ts", spec.key, *spec.numeric)


# ---- idempotency -----------------------------------------------------------------------------


def test_same_readings_twice_keep_the_count(store):
    readings = temps("kitchen", BASE, 60) + temps("hall", BASE, 60)
    store.write(TEMP, readings, RECEIVED)
    wait_count(store, TEMP, 120)
    store.write(TEMP, readings, RECEIVED + 1)  # a redelivered batch
    store.write(TEMP, readings[:10], RECEIVED + 2)  # and part of it once more
    # Nothing in the data changes, so make the last write observable: once it is visible, the
    # writes before it are applied too (QuestDB's WAL applies them in order).
    marker = Temperature(ts=BASE, room="kitchen", value=55.5, unit="°C")
    store.write(TEMP, [marker], RECEIVED + 3)
    eventually(lambda: store.since(TEMP, BASE, BASE + 1), lambda f: 55.5 in f["value"].tolist(), "marker visible")
    assert store.count(TEMP) == 120
    rows = store.since(TEMP, BASE)
    assert len(rows) == 120
    assert not rows.duplicated(["ts", "room"]).any()


def test_resent_with_changed_value_last_value_wins(store):
    store.write(TEMP, temps("kitchen", BASE, 60, value=lambda i: 20.0), RECEIVED)
    store.write(TEMP, temps("hall", BASE, 60, value=lambda i: 21.0), RECEIVED)
    wait_count(store, TEMP, 120)
    # The kitchen's readings come again with another value (a corrected re-send).
    store.write(TEMP, temps("kitchen", BASE, 60, value=lambda i: 80.0), RECEIVED + 5)
    rows = eventually(
        lambda: store.since(TEMP, BASE),
        lambda f: (f.loc[f["room"] == "kitchen", "value"] == 80.0).all(),
        "kitchen values replaced",
    )
    assert len(rows) == 120 and store.count(TEMP) == 120
    assert (rows.loc[rows["room"] == "hall", "value"] == 21.0).all()
    assert (ms(rows.loc[rows["room"] == "kitchen", "received_at"])) == [RECEIVED + 5] * 60
    newest = store.latest(TEMP).set_index("room")
    assert newest.loc["kitchen", "value"] == 80.0
    # Downsampled averages see the new values, both for buckets under and over 10 s.
    for max_points in (4, 10):  # buckets of 20 s and 6.667 s over one minute
        down = store.range(TEMP, BASE, BASE + 60 * SEC, max_points)
        per_room = by_key(down, TEMP)
        assert 0 < len(per_room["kitchen"]) <= max_points
        assert (per_room["kitchen"]["value"] == 80.0).all(), per_room["kitchen"]
        assert (per_room["hall"]["value"] == 21.0).all(), per_room["hall"]


def test_same_key_twice_in_one_batch_last_wins(store):
    batch = [
        Temperature(ts=BASE, room="kitchen", value=20.0, unit="°C"),
        Temperature(ts=BASE + SEC, room="kitchen", value=22.0, unit="°C"),
        Temperature(ts=BASE, room="kitchen", value=30.0, unit="°C"),
    ]
    store.write(TEMP, batch, RECEIVED)
    wait_count(store, TEMP, 2)
    rows = store.since(TEMP, BASE)
    assert rows["value"].tolist() == [30.0, 22.0]


# ---- latest ----------------------------------------------------------------------------------


def test_latest_is_the_newest_row_of_each_room(store):
    # Newer readings first, older ones in a later batch: latest follows ts, not arrival.
    store.write(TEMP, temps("kitchen", BASE + 30 * SEC, 10), RECEIVED)
    store.write(TEMP, temps("hall", BASE, 5, value=lambda i: 10.0 + i), RECEIVED + 1)
    store.write(TEMP, temps("kitchen", BASE, 10, value=lambda i: 50.0), RECEIVED + 2)
    store.write(TEMP, [Temperature(ts=BASE + 7 * SEC, room="attic", value=-5.5, unit="°C")], RECEIVED + 3)
    wait_count(store, TEMP, 26)
    latest = store.latest(TEMP)
    check_shape(latest, TEMP, TEMP.columns)
    assert sorted(latest["room"]) == ["attic", "hall", "kitchen"]
    expect = {
        "kitchen": (BASE + 39 * SEC, 20.0 + 9 % 7, RECEIVED),
        "hall": (BASE + 4 * SEC, 14.0, RECEIVED + 1),
        "attic": (BASE + 7 * SEC, -5.5, RECEIVED + 3),
    }
    for room, (ts, value, received) in expect.items():
        row = latest[latest["room"] == room]
        assert ms(row["ts"]) == [ts]
        assert row["value"].tolist() == [value]
        assert row["unit"].tolist() == ["°C"]
        assert ms(row["received_at"]) == [received]
    # Other topics are separate tables.
    assert store.latest(HUM).empty


def test_latest_systemusage_all_columns(store):
    store.write(SYS, usage("laptop", BASE, 20) + usage("server", BASE + 5 * SEC, 3), RECEIVED)
    wait_count(store, SYS, 23)
    latest = store.latest(SYS)
    check_shape(latest, SYS, SYS.columns)
    assert latest["device"].tolist() == ["laptop", "server"]
    laptop = latest.iloc[0]
    assert laptop["ts"] == pd.Timestamp(BASE + 19 * SEC, unit="ms", tz="UTC")
    assert laptop["cpu_percent"] == 5 + 19
    assert laptop["memory_used"] == (1 + 19 % 8) * GIB + 12345  # exact in float64
    assert laptop["memory_total"] == 16 * GIB
    assert ms(latest["received_at"]) == [RECEIVED, RECEIVED]


# ---- since -----------------------------------------------------------------------------------


def test_since_start_inclusive_end_exclusive_ordered(store):
    kitchen, hall = temps("kitchen", BASE, 10), temps("hall", BASE, 10, value=lambda i: 40.0 + i)
    store.write(TEMP, kitchen[5:] + hall[::-1], RECEIVED)  # out of order
    store.write(TEMP, kitchen[:5], RECEIVED + 1)
    wait_count(store, TEMP, 20)
    rows = store.since(TEMP, BASE + 3 * SEC, BASE + 7 * SEC)
    check_shape(rows, TEMP, TEMP.columns)
    assert ms(rows["ts"]) == [BASE + s * SEC for s in (3, 3, 4, 4, 5, 5, 6, 6)]
    assert rows["room"].tolist() == ["hall", "kitchen"] * 4
    assert rows.loc[rows["room"] == "hall", "value"].tolist() == [43.0, 44.0, 45.0, 46.0]
    assert ms(rows["received_at"]) == [RECEIVED, RECEIVED + 1, RECEIVED, RECEIVED + 1, RECEIVED, RECEIVED, RECEIVED, RECEIVED]
    # Without an end: everything from start on.
    tail = store.since(TEMP, BASE + 8 * SEC)
    assert ms(tail["ts"]) == [BASE + 8 * SEC] * 2 + [BASE + 9 * SEC] * 2
    # Start equal to end, or a window with no rows: empty, same columns.
    for frame in (store.since(TEMP, BASE + 3 * SEC, BASE + 3 * SEC), store.since(TEMP, BASE + 60 * SEC)):
        assert frame.empty
        assert list(frame.columns) == list(TEMP.columns)


# ---- range -----------------------------------------------------------------------------------


def test_range_returns_raw_rows_when_they_fit(store):
    store.write(TEMP, temps("kitchen", BASE, 30) + temps("hall", BASE + 500, 30), RECEIVED)
    wait_count(store, TEMP, 60)
    start, end = BASE, BASE + 30 * SEC
    raw = store.since(TEMP, start, end)[list(RANGE_COLUMNS(TEMP))]
    for max_points in (30, 1000):  # exactly fits, and far more room than rows
        got = store.range(TEMP, start, end, max_points)
        check_shape(got, TEMP, RANGE_COLUMNS(TEMP))
        pd.testing.assert_frame_equal(got, raw)


def test_range_raw_rows_inside_a_window_not_aligned_to_10s(store):
    # 25 rows per room in [start, end); rows just outside the window must not count.
    store.write(TEMP, temps("kitchen", BASE, 60) + temps("hall", BASE, 60), RECEIVED)
    wait_count(store, TEMP, 120)
    start, end = BASE + 5 * SEC, BASE + 30 * SEC
    got = store.range(TEMP, start, end, 25)
    raw = store.since(TEMP, start, end)[list(RANGE_COLUMNS(TEMP))]
    assert len(raw) == 50
    pd.testing.assert_frame_equal(got, raw)
    # A window inside one 10-second bucket (SQLite: raw rows only, no rollup bucket to read).
    pd.testing.assert_frame_equal(store.range(TEMP, BASE + 11_500, BASE + 15_000, 100), store.since(TEMP, BASE + 11_500, BASE + 15_000)[list(RANGE_COLUMNS(TEMP))])


def test_range_downsamples_a_window_inside_one_10s_bucket(store):
    store.write(TEMP, temps("kitchen", BASE, 200, step=50, value=lambda i: 20.0 + i % 4), RECEIVED)
    wait_count(store, TEMP, 200)
    down = store.range(TEMP, BASE + 500, BASE + 9_500, 10)  # 180 readings into buckets of 1 s
    check_shape(down, TEMP, envelope_columns(TEMP))
    assert 2 <= len(down) <= 10
    assert down["value_min"].min() == 20.0 and down["value_max"].max() == 23.0
    assert down["value"].between(20.0, 23.0).all()


@pytest.mark.parametrize("max_points", [20, 100])  # buckets of 15.8 s and 3.03 s over 300 s
def test_range_downsamples_to_max_points_per_series(store, max_points):
    wave = lambda i: 20.0 + (i * 7) % 23 + (i % 5) * 0.25
    store.write(TEMP, temps("kitchen", BASE, 300, value=wave), RECEIVED)
    store.write(TEMP, temps("hall", BASE + 250, 300, value=lambda i: 40.0 + i % 11), RECEIVED)
    wait_count(store, TEMP, 600)
    start, end = BASE, BASE + 300 * SEC
    bucket = range_bucket_ms(start, end, max_points)
    raw = by_key(store.since(TEMP, start, end), TEMP)
    down = store.range(TEMP, start, end, max_points)
    check_shape(down, TEMP, envelope_columns(TEMP))
    assert ms(down["ts"]) == sorted(ms(down["ts"]))
    per_room = by_key(down, TEMP)
    assert sorted(per_room) == ["hall", "kitchen"]
    for room, rows in per_room.items():
        assert 2 <= len(rows) <= max_points
        assert rows["ts"].is_unique
        assert all(start - bucket <= t < end for t in ms(rows["ts"]))
        lo, hi = raw[room]["value"].min(), raw[room]["value"].max()
        assert rows["value"].between(lo, hi).all(), (room, lo, hi, rows)
        assert rows["value"].nunique() > 1  # averages, not a constant
        assert (rows["value_min"] <= rows["value"]).all() and (rows["value"] <= rows["value_max"]).all()
        assert rows["value_min"].min() == lo and rows["value_max"].max() == hi  # every reading is in some bucket


def check_rows_outside_the_window_ignored(store, max_points):
    # Rows just before and just after the window carry an extreme value that must not leak in.
    before = temps("kitchen", BASE, 46, value=lambda i: 99.0)  # up to BASE + 45 s
    inside = temps("kitchen", BASE + 45_500, 300, value=lambda i: 20.0 + i % 9)
    after = temps("kitchen", BASE + 346 * SEC, 50, value=lambda i: 99.0)
    store.write(TEMP, before + inside + after, RECEIVED)
    wait_count(store, TEMP, 396)
    start, end = BASE + 45_500, BASE + 345_500  # not aligned to 10 s
    bucket = range_bucket_ms(start, end, max_points)
    down = store.range(TEMP, start, end, max_points)
    assert 2 <= len(down) <= max_points
    assert all(start - bucket <= t < end for t in ms(down["ts"]))
    assert down["value"].between(20.0, 28.0).all(), down
    assert down["value_min"].min() == 20.0 and down["value_max"].max() == 28.0, down


def test_range_downsampled_values_ignore_rows_outside_the_window(store):
    check_rows_outside_the_window_ignored(store, 100)  # buckets of 3.03 s


def test_range_long_buckets_ignore_rows_outside_the_window(store):
    check_rows_outside_the_window_ignored(store, 20)  # buckets of 15.8 s (SQLite: from the rollup)


def test_range_systemusage_averages_every_numeric_field(store):
    store.write(SYS, usage("laptop", BASE, 240), RECEIVED)
    wait_count(store, SYS, 240)
    start, end = BASE, BASE + 240 * SEC
    down = store.range(SYS, start, end, 12)
    check_shape(down, SYS, envelope_columns(SYS))
    assert 2 <= len(down) <= 12
    raw = store.since(SYS, start, end)
    for c in SYS.numeric:
        assert down[c].between(raw[c].min(), raw[c].max()).all(), c
        assert down[f"{c}_min"].min() == raw[c].min() and down[f"{c}_max"].max() == raw[c].max(), c
    assert (down[["memory_total", "memory_total_min", "memory_total_max"]] == 16 * GIB).all().all()


# ---- envelopes: min and max per bucket -----------------------------------------------------------


def bucket_of(down: pd.DataFrame, ts: int) -> pd.Series:
    """The downsampled row whose bucket holds `ts` (the last bucket starting at or before it)."""
    starts = ms(down["ts"])
    return down.iloc[max(i for i, t in enumerate(starts) if t <= ts)]


@pytest.mark.parametrize(("every", "hours", "max_points"), [
    (SEC, 1 / 3, 200),  # buckets of 6 s: from raw rows
    (SEC, 1 / 3, 8),  # 171 s (SQLite: 180 s, from the 10-second rollup)
    (5 * SEC, 3, 8),  # 1,543 s (SQLite: 1,560 s, from the minute rollup)
], ids=["raw", "10s-buckets", "minute-buckets"])
def test_a_spike_survives_in_its_buckets_max_and_the_mean_is_unchanged(store, every, hours, max_points):
    # Readings at 20 °C with 95 °C and -5 °C ones in the middle, and in each kind of piece at the
    # two edges of a window aligned to neither 10 s nor a minute (SQLite reads those from raw
    # rows and the 10-second rollup; BASE + 40 s is a whole minute).
    n = int(hours * 3_600_000 // every)
    last = BASE + (n - 1) * every
    start, end = BASE + 2_500, last + 500
    spikes = {BASE + 5 * SEC: 95.0, BASE + 20 * SEC: -5.0, BASE + n // 2 * every: 95.0, last - 10 * SEC: -5.0, last: 95.0}
    readings = temps("kitchen", BASE, n, step=every, value=lambda i: spikes.get(BASE + i * every, 20.0)) + temps("hall", BASE, n, step=every)
    store.write(TEMP, readings, RECEIVED)
    wait_count(store, TEMP, 2 * n)
    down = store.range(TEMP, start, end, max_points)
    check_shape(down, TEMP, envelope_columns(TEMP))
    kitchen = by_key(down, TEMP)["kitchen"]
    assert 2 <= len(kitchen) <= max_points
    raw = store.since(TEMP, start, end)
    raw = raw[raw["room"] == "kitchen"]
    starts = ms(kitchen["ts"])
    for i, row in kitchen.iterrows():
        upto = starts[i + 1] if i + 1 < len(starts) else end
        inside = raw[(raw["ts"] >= row["ts"]) & (raw["ts"] < pd.Timestamp(upto, unit="ms", tz="UTC"))]["value"]
        assert row["value"] == pytest.approx(inside.mean()), row  # the mean as before
        assert (row["value_min"], row["value_max"]) == (inside.min(), inside.max()), row
    for ts, value in spikes.items():
        row = bucket_of(kitchen, ts)
        assert value in (row["value_min"], row["value_max"]), (ts, row)
        assert row["value"] != value  # the mean flattens it: only the envelope shows it
    assert kitchen["value_max"].max() == 95.0 and kitchen["value_min"].min() == -5.0


@pytest.mark.parametrize(("every", "max_points"), [
    (SEC, 40),  # buckets of 3.08 s: from raw rows
    (SEC, 4),  # 40 s: SQLite's 10-second rollup
    (60 * SEC, 4),  # 2,400 s: SQLite's minute rollup
], ids=["raw", "10s-buckets", "minute-buckets"])
def test_redelivered_and_late_readings_keep_each_buckets_min_and_max_exact(store, every, max_points):
    # 120 readings; the buckets of [BASE, BASE + 120 readings) hold readings 0-39, 40-79, 80-119
    # (in the first two cases) or start 200 s before BASE (the third): the steps below each change
    # one bucket.
    start, end = BASE, BASE + 120 * every
    store.write(TEMP, temps("kitchen", BASE, 120, step=every, value=lambda i: 95.0 if i == 50 else 20.0), RECEIVED)
    wait_count(store, TEMP, 120)
    spike = BASE + 50 * every

    def envelope_at(ts):
        return lambda: bucket_of(store.range(TEMP, start, end, max_points), ts)

    assert envelope_at(spike)()["value_max"] == 95.0
    # The spike comes again corrected, in a batch that repeats it (a redelivery, SQLite's
    # upsert path): the bucket's max drops back, its mean follows.
    fixed = [Temperature(ts=spike, room="kitchen", value=95.0, unit="°C"), Temperature(ts=spike, room="kitchen", value=21.0, unit="°C")]
    store.write(TEMP, fixed, RECEIVED + 1)
    row = eventually(envelope_at(spike), lambda r: r["value_max"] == 21.0, "the corrected max")
    assert row["value_min"] == 20.0
    # A reading that lowers another bucket's min through the upsert path, beside stored ones.
    store.write(TEMP, temps("kitchen", BASE + 100 * every, 3, step=every, value=lambda i: 20.0 - 30 * (i == 1)) * 2, RECEIVED + 2)
    eventually(envelope_at(BASE + 101 * every), lambda r: r["value_min"] == -10.0, "the upserted min")
    # New readings into stored buckets (a plain insert, half a reading after stored ones):
    # each bucket's max is the larger of the stored one and the batch's own.
    late = BASE + 10 * every + every // 2
    store.write(TEMP, temps("kitchen", late, 3, step=every, value=lambda i: 60.0 + i), RECEIVED + 3)
    row = eventually(envelope_at(late), lambda r: r["value_max"] == 62.0, "the late max")
    assert row["value_min"] == 20.0
    wait_count(store, TEMP, 123)
    raw = store.since(TEMP, start, end)
    down = store.range(TEMP, start, end, max_points)
    assert down["value_max"].max() == raw["value"].max() == 62.0
    assert down["value_min"].min() == raw["value"].min() == -10.0
    assert down["value"].tolist() == pytest.approx([
        raw[(raw["ts"] >= t) & (raw["ts"] < u)]["value"].mean()
        for t, u in zip(down["ts"], [*down["ts"][1:], pd.Timestamp(end, unit="ms", tz="UTC")], strict=True)
    ])


def test_an_empty_bucket_has_no_row(store):
    # Readings for 100 s, nothing for 300 s, readings for 100 s: no bucket inside the hole.
    store.write(TEMP, temps("kitchen", BASE, 100) + temps("kitchen", BASE + 400 * SEC, 100), RECEIVED)
    wait_count(store, TEMP, 200)
    for max_points in (20, 150):  # buckets of 26.3 s (SQLite: 30 s, from the rollup) and 3.36 s
        down = store.range(TEMP, BASE, BASE + 500 * SEC, max_points)
        starts = ms(down["ts"])
        assert starts and not [t for t in starts if BASE + 100 * SEC <= t < BASE + 370 * SEC], starts
        assert not down[list(envelope_columns(TEMP)[2:])].isna().any().any()


def test_a_locked_sqlite_store_fails_its_health_check_in_seconds_and_recovers(tmp_path):
    """The dashboard's store check (ping) reads through the file's locks: a store another
    process holds locked is unreachable, said within seconds, and reachable once released."""
    import sqlite3

    from pipeline.store.sqlite import PING_TIMEOUT_S

    url = "sqlite:///" + str(tmp_path / "locked.db")
    with open_store(url) as store:
        store.ensure_tables()
        store.write(TOPICS["temperature"], temps("kitchen", BASE, 3), BASE)
    locker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with open_store(url) as store:
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                store.ping()
            assert time.monotonic() - start < PING_TIMEOUT_S + 3
            locker.close()  # the other process lets go
            store.ping()
    finally:
        locker.close()


def test_sqlite_rollup_of_an_earlier_version_gains_min_and_max_once(tmp_path, caplog):
    """A database whose rollup has sums only (earlier versions) is rebuilt from its raw table."""
    import sqlite3

    path = tmp_path / "old.db"
    readings = temps("kitchen", BASE, 300, value=lambda i: 95.0 if i == 150 else 20.0 + i % 3)
    with sqlite3.connect(path) as old:
        old.executescript(f"""
            CREATE TABLE temperature (ts INTEGER NOT NULL, room TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL,
                received_at INTEGER NOT NULL, PRIMARY KEY (ts, room)) WITHOUT ROWID;
            CREATE TABLE temperature_rollup (bucket INTEGER NOT NULL, room TEXT NOT NULL, n INTEGER NOT NULL,
                value REAL NOT NULL, PRIMARY KEY (bucket, room)) WITHOUT ROWID;
            INSERT INTO temperature VALUES {', '.join(f"({r.ts}, 'kitchen', {r.value}, '°C', {RECEIVED})" for r in readings)};
            INSERT INTO temperature_rollup SELECT ts / 10000 * 10000, room, count(*), sum(value) FROM temperature GROUP BY 1, 2;
        """)
    old.close()
    with caplog.at_level("INFO", logger="store.sqlite"), open_store(f"sqlite:///{path}") as store:
        store.ensure_tables()
        store.ensure_tables()  # a second start finds it done
        rebuilt = [r.getMessage() for r in caplog.records if "rebuilding the rollups of temperature" in r.getMessage()]
        assert len(rebuilt) == 1, caplog.text
        with open_store(f"sqlite:///{tmp_path / 'new.db'}") as new:  # the rollups as this version writes them
            new.ensure_tables()
            new.write(TEMP, readings, RECEIVED)
            for max_points in (10, 2):  # 40 s buckets (the 10-second rollup) and 300 s (the minute one)
                down = store.range(TEMP, BASE, BASE + 300 * SEC, max_points)
                assert down["value_max"].max() == 95.0 and down["value_min"].min() == 20.0
                pd.testing.assert_frame_equal(down, new.range(TEMP, BASE, BASE + 300 * SEC, max_points))
        store.write(TEMP, temps("kitchen", BASE + 300 * SEC, 10, value=lambda i: 99.0), RECEIVED)  # and it is written as usual
        assert store.range(TEMP, BASE, BASE + 310 * SEC, 10)["value_max"].max() == 99.0


# ---- time zones ------------------------------------------------------------------------------


def test_time_zones_give_identical_results(store):
    readings = temps("kitchen", BASE + 123, 40) + temps("hall", BASE + 456, 40)
    store.write(TEMP, readings, RECEIVED)
    wait_count(store, TEMP, 80)
    start_ms, end_ms = BASE + 10 * SEC, BASE + 30 * SEC
    utc = datetime(1970, 1, 1, tzinfo=UTC)
    start_utc = utc + timedelta(milliseconds=start_ms)
    end_utc = utc + timedelta(milliseconds=end_ms)
    forms = {
        "epoch ms": (start_ms, end_ms),
        "naive UTC": (start_utc.replace(tzinfo=None), end_utc.replace(tzinfo=None)),
        "New York": (start_utc.astimezone(ZoneInfo("America/New_York")), end_utc.astimezone(ZoneInfo("America/New_York"))),
        "+05:30": tuple(t.astimezone(timezone(timedelta(hours=5, minutes=30))) for t in (start_utc, end_utc)),
        "pandas": (pd.Timestamp(start_ms, unit="ms", tz="Asia/Tokyo"), pd.Timestamp(end_ms, unit="ms", tz="Asia/Tokyo")),
    }
    reference = store.since(TEMP, start_ms, end_ms)
    written = sorted(r.ts for r in readings if start_ms <= r.ts < end_ms)
    assert sorted(ms(reference["ts"])) == written  # ts comes back UTC-aware, equal to what was written
    assert str(reference["ts"].dtype) == "datetime64[ms, UTC]"
    assert reference["ts"].iloc[0] == pd.Timestamp(written[0], unit="ms", tz="UTC")
    for name, (start, end) in forms.items():
        pd.testing.assert_frame_equal(store.since(TEMP, start, end), reference, obj=f"since with {name}")
        for max_points in (5, 100):
            pd.testing.assert_frame_equal(
                store.range(TEMP, start, end, max_points),
                store.range(TEMP, start_ms, end_ms, max_points),
                obj=f"range({max_points}) with {name}",
            )


# ---- empty tables and unknown rooms ----------------------------------------------------------


@pytest.mark.parametrize("spec", list(TOPICS.values()), ids=list(TOPICS))
def test_empty_tables_give_empty_frames(store, spec):
    assert store.count(spec) == 0
    store.ping()
    frames = {
        "latest": (store.latest(spec), spec.columns),
        "since": (store.since(spec, BASE), spec.columns),
        "since with end": (store.since(spec, BASE, BASE + SEC), spec.columns),
        "range raw": (store.range(spec, BASE, BASE + 60 * SEC, 1000), RANGE_COLUMNS(spec)),
        "range downsampled": (store.range(spec, BASE, BASE + 86_400 * SEC, 10), RANGE_COLUMNS(spec)),
    }
    for name, (frame, columns) in frames.items():
        assert frame.empty, name
        check_shape(frame, spec, columns)


def test_unknown_rooms_do_not_appear(store):
    store.write(TEMP, temps("kitchen", BASE, 30) + temps("hall", BASE, 30), RECEIVED)
    store.write(HUM, [Humidity(ts=BASE, room="cellar", value=80.0, unit="%")], RECEIVED)
    wait_count(store, TEMP, 60)
    wait_count(store, HUM, 1)
    for frame in (store.latest(TEMP), store.since(TEMP, BASE), store.range(TEMP, BASE, BASE + 30 * SEC, 5)):
        assert set(frame["room"]) == {"kitchen", "hall"}
    assert store.latest(HUM)["room"].tolist() == ["cellar"]
    assert store.latest(HUM)["unit"].tolist() == ["%"]
    # A window before any reading: nothing, and no error.
    assert store.since(TEMP, BASE - 60 * SEC, BASE).empty
    assert store.range(TEMP, BASE - 60 * SEC, BASE, 5).empty


def test_empty_write_is_a_no_op(store):
    store.write(TEMP, [], RECEIVED)
    assert store.count(TEMP) == 0


# ---- the writers' columnar batches (schema.validate_batch -> Batch) ---------------------------


def as_messages(readings) -> tuple[list[bytes], list[bytes]]:
    return [r.model_dump_json().encode() for r in readings], [getattr(r, "room", None) or r.device for r in readings]


def test_a_batch_of_columns_stores_what_its_readings_store(store, tmp_path):
    from pipeline.schema import validate_batch

    readings = temps("kitchen", BASE, 120, value=lambda i: 20.0 + i % 7 / 4) + temps("hall", BASE + 500, 120)
    values, keys = as_messages(readings)
    batch, rejected = validate_batch(TEMP, values, [k.encode() for k in keys], RECEIVED)
    assert rejected == []
    store.write(TEMP, batch, RECEIVED)
    wait_count(store, TEMP, 240)
    with open_store("sqlite:///" + str(tmp_path / "from-readings.db")) as other:
        other.ensure_tables()
        other.write(TEMP, readings, RECEIVED)
        pd.testing.assert_frame_equal(store.since(TEMP, BASE), other.since(TEMP, BASE))
        pd.testing.assert_frame_equal(store.range(TEMP, BASE, BASE + 120 * SEC, 6), other.range(TEMP, BASE, BASE + 120 * SEC, 6))


# The page's ranges as it asks the store for them (dash_app/graphs.py): the live window in
# LIVE_BUCKETS + 1 points, the others in LIVE_MAX_POINTS; "now" on no round second.
NOW = BASE + 9 * 86_400_000 + 4_321
PAGE_DEFAULTS = {name: Config.model_fields[name].default for name in ("live_window_s", "live_buckets", "live_max_points")}
PAGE_RANGES = {
    "live": (window("live", None, None, NOW, PAGE_DEFAULTS["live_window_s"]), PAGE_DEFAULTS["live_buckets"] + 1),
    **{choice: (window(choice, None, None, NOW, 0), PAGE_DEFAULTS["live_max_points"]) for choice in SECONDS},
    "custom-10-days": (window("custom", "2026-03-10", "2026-03-19", NOW, 0), PAGE_DEFAULTS["live_max_points"]),
    "zoom": ((NOW - 5_432_123, NOW - 1_234_567), PAGE_DEFAULTS["live_max_points"]),
}


@pytest.mark.parametrize("page_range", list(PAGE_RANGES))
def test_every_range_the_page_offers_gives_sqlites_frames(store, tmp_path, page_range):
    # Three readings per point a room, at an uneven spacing, from before the window to after it:
    # the page's buckets, their starts, means, lows and highs must be SQLite's on every store.
    (start, end), max_points = PAGE_RANGES[page_range]
    n = 3 * max_points
    every = (end - start) / n * 1.01  # not a divisor of any bucket: bucket counts vary
    readings = [
        Temperature(ts=int(start - 2 * every + i * every) + (i * 37) % 11, room=room, value=20.0 + (i * 7 + shift) % 23 / 4, unit="°C")
        for shift, room in enumerate(["kitchen", "hall"]) for i in range(n + 2)
    ]
    store.write(TEMP, readings, RECEIVED)
    wait_count(store, TEMP, len(readings))
    with open_store("sqlite:///" + str(tmp_path / "reference.db")) as reference:
        reference.ensure_tables()
        reference.write(TEMP, readings, RECEIVED)
        want = reference.range(TEMP, start, end, max_points)
        assert ms(want["ts"])[:2] == [start // (step := range_bucket_ms(start, end, max_points)) * step] * 2, "not downsampled"
        pd.testing.assert_frame_equal(store.range(TEMP, start, end, max_points), want, check_exact=False, rtol=1e-9)


def test_a_redelivered_batch_overlapping_stored_rows_keeps_count_and_averages_exact(store):
    # New rows, then a batch where half the (ts, key) are stored already with other values, one
    # comes twice, and the rest are new: the count, the last values and the long-range means
    # (SQLite: from its rollup) all match a store written once with the final values.
    from pipeline.schema import validate_batch

    first = temps("kitchen", BASE, 100, value=lambda i: 20.0)
    second = temps("kitchen", BASE + 50 * SEC, 100, value=lambda i: 30.0 + i % 3) + temps("kitchen", BASE + 60 * SEC, 1, value=lambda i: 35.0)
    for readings in (first, second):
        values, keys = as_messages(readings)
        batch, _ = validate_batch(TEMP, values, [k.encode() for k in keys], RECEIVED)
        store.write(TEMP, batch, RECEIVED)
    wait_count(store, TEMP, 150)
    final = {r.ts: r.value for r in first + second}  # last wins, the repeated ts included
    stored = store.since(TEMP, BASE)
    assert dict(zip(ms(stored["ts"]), stored["value"], strict=True)) == final
    start, end = BASE, BASE + 150 * SEC
    down = store.range(TEMP, start, end, 4)  # 50 s buckets: the rollup on SQLite
    step = range_bucket_ms(start, end, 4)
    for t, v in zip(ms(down["ts"]), down["value"], strict=True):
        inside = [x for ts, x in final.items() if t <= ts < t + step]
        assert v == pytest.approx(sum(inside) / len(inside)), t


# ---- QuestDB as deployed: which endpoint and credentials each part uses (no server needed) ----------


@pytest.mark.parametrize(("store_url", "pg_url", "sender", "pg"), [
    ("questdb://qdb.local", "", "http::addr=qdb.local:9000;auto_flush=off;retry_timeout=5000;",
     {"host": "qdb.local", "port": "8812", "user": "admin", "password": "quest", "dbname": "qdb"}),
    ("questdb://qdb.local:9100", "postgresql://reader:s%40cret@pg.local:5432/qdb?sslmode=require",
     "http::addr=qdb.local:9100;auto_flush=off;retry_timeout=5000;",
     {"host": "pg.local", "port": "5432", "user": "reader", "password": "s@cret", "dbname": "qdb", "sslmode": "require"}),
    ("https::addr=db.example:9000;username=writer;password=a;;b;tls_verify=unsafe_off;", "postgresql://:8813",
     "https::addr=db.example:9000;username=writer;password=a;;b;tls_verify=unsafe_off;auto_flush=off;retry_timeout=5000;",
     {"host": "db.example", "port": "8813", "user": "admin", "password": "quest", "dbname": "qdb"}),
    ("http::addr=10.0.0.7;token=abc;retry_timeout=100", "postgresql://app@/qdb2",
     "http::addr=10.0.0.7;token=abc;retry_timeout=100;auto_flush=off;",
     {"host": "10.0.0.7", "port": "8812", "user": "app", "password": "quest", "dbname": "qdb2"}),
], ids=["defaults", "questdb-url-and-pg-url", "https-login", "http-token"])
def test_questdb_settings_give_each_endpoint(store_url, pg_url, sender, pg):
    from pipeline import config

    assert config.store_url_problem(store_url) is None
    store = open_store(store_url, pg_url)  # connects nowhere
    try:
        assert store._sender_conf == sender
        assert {k: v for k, v in store._pg_params.items() if k not in ("connect_timeout", "application_name")} == pg
        assert store._sender is None and not store._idle
    finally:
        store.close()


def test_writer_and_dashboard_read_questdb_pg_url(monkeypatch):
    """Writers (`pipeline.run consumer`) write with STORE_URL and read with QUESTDB_PG_URL; the dashboard only reads."""
    from dash_app.services import Services
    from pipeline import config, run, writer

    monkeypatch.setenv("STORE_URL", "https::addr=ilp.example:9000;username=w;password=pw;")
    monkeypatch.setenv("QUESTDB_PG_URL", "postgresql://r:rpw@pg.example:8812/qdb")
    cfg = config.load()
    used = {}
    monkeypatch.setattr(writer, "run", lambda cfg, spec, writes, stop: used.update(writes=writes))
    run.dispatch(run.parser().parse_args(["consumer", "temperature"]), cfg, None)
    store = open_store(*used["writes"].urls)  # what the writer's write process opens
    assert store._sender_conf.startswith("https::addr=ilp.example:9000;username=w;password=pw;")
    assert (store._pg_params["host"], store._pg_params["user"], store._pg_params["password"]) == ("pg.example", "r", "rpw")
    dashboard = Services.from_config(cfg).store
    try:
        assert (dashboard._pg_params["host"], dashboard._pg_params["user"]) == ("pg.example", "r")
        assert dashboard._sender is None  # opened by write() only
    finally:
        dashboard.close()


def test_refused_questdb_settings_hide_secrets(monkeypatch):
    from pipeline import config

    monkeypatch.setenv("STORE_URL", "https::addr=db:9000;username=w;password=hunter2;pasword=x;")
    with pytest.raises(config.ConfigError) as refused:
        config.load()
    assert "unknown key 'pasword'" in str(refused.value) and "hunter2" not in str(refused.value)
    monkeypatch.setenv("STORE_URL", "questdb://db")
    monkeypatch.setenv("QUESTDB_PG_URL", "postgresql://r:hunter2@db:99999/qdb")
    with pytest.raises(config.ConfigError) as refused:
        config.load()
    assert "QUESTDB_PG_URL='postgresql://r:***@db:99999/qdb' refused: port is not 1 to 65535" in str(refused.value)


# ---- a table dropped under a running writer ----------------------------------------------------


def write_as_a_writer(store: Store, spec: Topic, readings, attempts: int = 20) -> int:
    """What the writer does: write until write() returns (only then would it commit). Failed attempts."""
    for failed in range(attempts):
        try:
            store.write(spec, readings, RECEIVED + failed)
            return failed
        except StoreUnavailable:
            time.sleep(0.05)
    pytest.fail(f"write did not succeed in {attempts} attempts")


def test_questdb_table_dropped_under_the_writer_is_recreated_right_and_nothing_committed_is_lost(questdb):
    store = open_store(questdb.store_url, questdb.pg_url)
    try:
        store.ensure_tables()
        before, after = temps("kitchen", BASE, 50), temps("kitchen", BASE + 50 * SEC, 50)
        assert write_as_a_writer(store, TEMP, before) == 0
        wait_count(store, TEMP, 50)
        store._query(f"DROP TABLE {TEMP.name}")  # under the running writer: its sender stays open
        # QuestDB 9.2.3 acknowledged the first batch after a drop without storing it, and ILP recreates
        # a dropped table with its defaults: write() must not return (so nothing is committed) until
        # the batch is in a table with designated `ts` and DEDUP.
        write_as_a_writer(store, TEMP, after)
        row = store._table_row(TEMP.name)
        assert store._shape_problem(row) is None, row
        wait_count(store, TEMP, 50)  # what was dropped stays dropped; the batch after it is held
        assert ms(store.since(TEMP, BASE)["ts"]) == [r.ts for r in after]
        write_as_a_writer(store, TEMP, after)  # a redelivery keeps the count: DEDUP is back
        store.write(TEMP, [Temperature(ts=BASE + 99 * SEC, room="kitchen", value=55.5, unit="°C")], RECEIVED + 99)
        eventually(lambda: store.latest(TEMP), lambda f: f["value"].tolist() == [55.5], "marker visible")
        assert store.count(TEMP) == 50
    finally:
        _, aside = store._query("SELECT table_name FROM tables() WHERE table_name LIKE '%_misshapen_%'")
        for (name,) in aside:
            store._query(f"DROP TABLE IF EXISTS {name}")
        store.close()


class FakeQuestDB:
    """QuestDB as the write path meets it, in memory: tables by id, ILP that recreates a dropped table
    with its defaults, and (`stale_ack`) 9.2.3's acknowledgement of the first batch after a drop
    into the dropped table's writer. Checks write()'s logic without a server; the case above checks
    it against one."""

    def __init__(self, store, monkeypatch):
        self.tables: dict[str, dict] = {}
        self.next_id = 1
        self.stale_ack = False
        monkeypatch.setattr(store, "_query", self.query)
        monkeypatch.setattr(store, "_open_sender", lambda: self)
        monkeypatch.setattr(store, "_drop_sender", lambda: None)

    def create(self, name, designated="ts", dedup=True):
        self.tables[name] = {"id": self.next_id, "designated": designated, "dedup": dedup, "rows": {}}
        self.next_id += 1

    def query(self, sql, params=None):
        import re

        if sql.startswith("SELECT * FROM tables()"):
            return ["id", "table_name", "designatedTimestamp"], []
        if m := re.match(r"SELECT id, .* FROM tables\(\) WHERE table_name = '(\w+)'", sql):
            t = self.tables.get(m[1])
            return [], [(t["id"], t["designated"], True, t["dedup"])] if t else []
        if m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", sql):
            if m[1] not in self.tables:
                self.create(m[1])
            return [], []
        if m := re.match(r"RENAME TABLE (\w+) TO (\w+)", sql):
            self.tables[m[2]] = self.tables.pop(m[1])
            return [], []
        if m := re.match(r"SELECT received_at FROM (\w+) WHERE ts = %s AND (\w+) = %s", sql):
            rows = self.tables[m[1]]["rows"]
            return [], [(rows[(params[0], params[1])],)] if (params[0], params[1]) in rows else []
        raise AssertionError(sql)

    def dataframe(self, frame, table_name, symbols, at):
        self.sent = (table_name, frame)

    def flush(self):
        name, frame = self.sent
        if name not in self.tables:
            if self.stale_ack:  # acknowledged into the dropped table's writer: stored nowhere
                self.stale_ack = False
                return
            self.create(name, designated="timestamp", dedup=False)
        rows = self.tables[name]["rows"]
        for ts, key, received in zip(frame["ts"], frame["room"], frame["received_at"], strict=True):
            rows[(pd.Timestamp(ts).to_pydatetime(), key)] = pd.Timestamp(received).to_pydatetime()


@pytest.mark.parametrize("stale_ack", [True, False], ids=["acknowledged-into-the-dropped-table", "recreated-by-ilp"])
def test_questdb_write_after_a_drop_returns_only_once_held(monkeypatch, stale_ack):
    store = open_store("questdb://fake")
    fake = FakeQuestDB(store, monkeypatch)
    store.write(TEMP, temps("kitchen", BASE, 3), RECEIVED)  # creates the table in SQL first
    assert fake.tables["temperature"]["designated"] == "ts" and len(fake.tables["temperature"]["rows"]) == 3
    del fake.tables["temperature"]  # DROP TABLE, or a restart on an empty volume
    fake.stale_ack = stale_ack
    batch = temps("kitchen", BASE + 10 * SEC, 3)
    with pytest.raises(StoreUnavailable, match="changed under the write"):
        store.write(TEMP, batch, RECEIVED + 1)  # not held: the writer would not commit it
    store.write(TEMP, batch, RECEIVED + 2)  # the writer's retry
    assert ("temperature_misshapen_2" in fake.tables) is not stale_ack  # ILP's table, if it made one, set aside
    table = fake.tables["temperature"]
    assert table["designated"] == "ts" and table["dedup"]
    assert sorted(ts for ts, _ in table["rows"]) == [_naive(r.ts) for r in batch]


def _naive(ts_ms: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(milliseconds=ts_ms)


def test_questdb_frame_keeps_the_last_reading_of_a_repeated_ts_and_key():
    # What QuestDBStore.write hands to sender.dataframe(), checked without a server.
    from pipeline.schema import as_batch
    from pipeline.store.questdb import ilp_frame

    readings = temps("kitchen", BASE, 5) + temps("hall", BASE, 5) + temps("kitchen", BASE + SEC, 1, value=lambda i: 99.0)
    frame = ilp_frame(TEMP, as_batch(TEMP, readings), RECEIVED)
    assert len(frame) == 10
    got = {(int(t.value // 1_000_000), r): v for t, r, v in zip(frame["ts"], frame["room"], frame["value"], strict=True)}
    assert got[(BASE + SEC, "kitchen")] == 99.0
    assert list(frame.columns) == list(TEMP.columns) and set(frame["unit"]) == {"°C"}


# ---- alerts -----------------------------------------------------------------------------------


def test_alerts_keep_each_change_once_and_say_what_each_alert_was_in_at_a_time(store):
    from pipeline.alerts import Alert

    rule = f"hot-{time.monotonic_ns()}"  # QuestDB is one server for the session: a table others write too

    def change(sensor: str, state: str, since: int, ts: int) -> Alert:
        return Alert(rule=rule, sensor=sensor, topic="temperature", state=state, since=since, ts=ts, seen=ts, summary=state, value=30.0)

    day = 24 * 3600 * SEC
    old = [change("lab", "pending", BASE, BASE), change("lab", "firing", BASE, BASE + 60 * SEC),  # firing for days
           change("hall", "pending", BASE, BASE), change("hall", "firing", BASE, BASE + 60 * SEC),
           change("hall", "resolved", BASE, BASE + 120 * SEC)]  # over long ago
    recent = [change("lab", "resolved", BASE, BASE + 2 * day), change("attic", "pending", BASE + 2 * day, BASE + 2 * day)]
    store.write_alerts(old + recent)
    store.write_alerts(recent[:1])  # stored again: still one row
    mine = lambda alerts: [a for a in alerts if a.rule == rule]
    everything = eventually(lambda: mine(store.alerts(0)), lambda a: len(a) == 7, "all 7 changes")
    assert sorted(everything, key=lambda a: (a.ts, a.sensor, a.state)) == sorted(old + recent, key=lambda a: (a.ts, a.sensor, a.state))
    assert {(a.sensor, a.state) for a in mine(store.alerts(BASE + day))} == {("lab", "resolved"), ("attic", "pending")}
    # A day after it began, lab still fires and hall is over; attic has not started.
    at_day = {(a.sensor, a.state, a.ts) for a in mine(store.latest_alerts(BASE + day))}
    assert at_day == {("lab", "firing", BASE + 60 * SEC), ("hall", "resolved", BASE + 120 * SEC)}
    at_end = {(a.sensor, a.state) for a in mine(store.latest_alerts(BASE + 3 * day))}
    assert at_end == {("lab", "resolved"), ("hall", "resolved"), ("attic", "pending")}
