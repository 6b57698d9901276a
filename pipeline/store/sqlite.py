"""SQLite backend: the embedded default, one file shared safely by several processes (WAL).

Each topic has a raw table keyed on (ts, key) like QuestDB's DEDUP UPSERT KEYS, and two
rollups of it, 10-second and 1-minute buckets (count, sum, min and max of each numeric field),
kept exact on every write, upserts included. A 24-hour chart reads the 10-second rollup and a
7-day one the minute rollup instead of scanning millions of raw rows: that is what keeps long
ranges fast, and the min and max keep a lone spike visible in them.

A write is one transaction over the batch's columns. Usually every (ts, key) is new: the rows go
in with one `executemany` of a plain INSERT, and each rollup gets the batch's own sums per
(bucket, key), added up with numpy (a few hundred upserts instead of a trigger per row, which
cost half of the insert), and its own min and max merged with the stored ones. If any (ts, key)
was already stored or comes twice in the batch (a redelivery), that attempt is rolled back to a
savepoint and the batch goes through a temporary table instead: the last reading of a (ts, key)
wins, the 10-second sums are adjusted by the difference to the rows it replaces, in SQL, the
touched buckets' min and max are read again from the raw table (a replaced reading may have been
the extreme, which no difference can undo), and the touched minutes are summed again from their
10-second buckets (six rows each).

A database written by a version whose rollup had no min and max, or no minute rollup, gets both
rollups rebuilt from the raw table once, by the first `ensure_tables()` that finds it so (logged).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from pipeline.alerts import Alert
from pipeline.schema import TOPICS, Batch, Reading, Topic, as_batch
from pipeline.store.base import (
    MINUTE_MS,
    TEN_SECONDS_MS,
    Store,
    StoreUnavailable,
    TimeLike,
    empty_frame,
    envelope_columns,
    range_bucket_ms,
    to_ms,
)

if TYPE_CHECKING:  # imported by the reads: a store writer's processes never load pandas
    import pandas as pd

log = logging.getLogger("store.sqlite")

ROLLUP_MS = TEN_SECONDS_MS
PING_TIMEOUT_S = 2.0
# Rollup tables by bucket width, widest first (what range() reads from, when it can).
ROLLUPS = ((MINUTE_MS, "_rollup_1m"), (ROLLUP_MS, "_rollup"))
ALERT_COLUMNS = ("rule", "sensor", "topic", "state", "since", "ts", "seen", "summary", "value")
ALERTS_DDL = (
    "CREATE TABLE IF NOT EXISTS alerts (rule TEXT NOT NULL, sensor TEXT NOT NULL, topic TEXT NOT NULL, state TEXT NOT NULL, "
    "since INTEGER NOT NULL, ts INTEGER NOT NULL, seen INTEGER NOT NULL, summary TEXT NOT NULL, value REAL, "
    "PRIMARY KEY (rule, sensor, since, state)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);"
)


def _extremes(spec: Topic) -> list[tuple[str, str, str]]:
    """The rollup's min and max columns in table order, as (column, SQL function, field):
    ("value_min", "min", "value"), ("value_max", "max", "value"), then the next field's."""
    return [(f"{c}_{fn}", fn, c) for c in spec.numeric for fn in ("min", "max")]


def _merged(spec: Topic) -> str:
    """Rollup rows merged into one, in table order: sum(n), sum(value), min(value_min), max(value_max)."""
    return ", ".join(["sum(n)", *(f"sum({c})" for c in spec.numeric), *(f"{fn}({col})" for col, fn, _ in _extremes(spec))])


def _create_rollups(spec: Topic) -> str:
    sums = ", ".join(f"{c} REAL NOT NULL" for c in (*spec.numeric, *(col for col, _, _ in _extremes(spec))))
    return ";".join(
        f"CREATE TABLE IF NOT EXISTS {spec.name}{suffix} (bucket INTEGER NOT NULL, {spec.key} TEXT NOT NULL, "
        f"n INTEGER NOT NULL, {sums}, PRIMARY KEY (bucket, {spec.key})) WITHOUT ROWID"
        for _, suffix in ROLLUPS
    )


def _cover(start: int, end: int, widths: Sequence[int]) -> list[tuple[int, int, int]]:
    """[start, end) as pieces to read, (width, lo, hi): the rollup of `width` holds whole buckets
    over [lo, hi), the widest that fit first; what is left at the two edges goes to the next
    narrower rollup and, below the narrowest, to raw rows (width 0). Nothing outside the window."""
    if not widths:
        return [(0, start, end)] if start < end else []
    width, narrower = widths[0], widths[1:]
    lo, hi = -(-start // width) * width, end // width * width
    if lo >= hi:
        return _cover(start, end, narrower)
    return [(width, lo, hi), *_cover(start, lo, narrower), *_cover(hi, end, narrower)]


def _schema(spec: Topic) -> str:
    t, k = spec.name, spec.key
    cols = ", ".join(
        [f"{c} REAL NOT NULL" for c in spec.numeric] + [f"{c} TEXT NOT NULL" for c in spec.text]
    )
    return f"""
    CREATE TABLE IF NOT EXISTS {t} (
        ts INTEGER NOT NULL, {k} TEXT NOT NULL, {cols}, received_at INTEGER NOT NULL,
        PRIMARY KEY (ts, {k})) WITHOUT ROWID;
    {_create_rollups(spec)};
    DROP TRIGGER IF EXISTS {t}_rollup_insert;  -- earlier versions kept the rollup by trigger
    DROP TRIGGER IF EXISTS {t}_rollup_update;
    """


class _Statements:
    """The SQL of one topic's write, built once."""

    def __init__(self, spec: Topic):
        t, k, cols = spec.name, spec.key, spec.columns
        fields = cols[:-1]  # what a batch carries; received_at is bound per batch
        marks = ", ".join("?" * len(fields))
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        self.insert_new = f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({marks}, ?) ON CONFLICT (ts, {k}) DO NOTHING"
        extremes = _extremes(spec)
        add_sums = ", ".join(f"{c} = {c} + excluded.{c}" for c in spec.numeric)
        merge_extremes = ", ".join(f"{col} = {fn}({col}, excluded.{col})" for col, fn, _ in extremes)
        self.rollup_add, self.minutes_add = (
            f"INSERT INTO {t}{suffix} VALUES (?, ?, ?, {', '.join('?' * (len(spec.numeric) + len(extremes)))}) "
            f"ON CONFLICT (bucket, {k}) DO UPDATE SET n = n + excluded.n, {add_sums}, {merge_extremes}"
            for suffix in ("_rollup", "_rollup_1m")
        )
        per_bucket = ", ".join([f"sum({c})" for c in spec.numeric] + [f"{fn}({c})" for _, fn, c in extremes])
        self.rollup_rebuild = (
            f"INSERT INTO {t}_rollup SELECT ts / {ROLLUP_MS} * {ROLLUP_MS}, {k}, count(*), {per_bucket} FROM {t} GROUP BY 1, 2"
        )
        self.minutes_rebuild = (
            f"INSERT INTO {t}_rollup_1m SELECT bucket / {MINUTE_MS} * {MINUTE_MS}, {k}, {_merged(spec)} FROM {t}_rollup GROUP BY 1, 2"
        )
        # One minute of one key, from its 10-second buckets: (minute, each bucket of it..., key).
        # The buckets by value, not as a range: the rollup's key is (bucket, key), so a range
        # would visit every key's buckets of that minute.
        self.minute_refresh = (
            f"INSERT OR REPLACE INTO {t}_rollup_1m SELECT ?, {k}, {_merged(spec)} FROM {t}_rollup "
            f"WHERE bucket IN ({', '.join('?' * (MINUTE_MS // ROLLUP_MS))}) AND {k} = ? GROUP BY {k}"
        )
        self.latest = (
            "INSERT INTO latest VALUES (?, ?, ?) ON CONFLICT (topic, key) "
            "DO UPDATE SET ts = excluded.ts WHERE excluded.ts > latest.ts"
        )
        # The redelivery path: the batch in a temporary table, last reading of a (ts, key) winning.
        kinds = ["INTEGER NOT NULL", "TEXT NOT NULL"] + ["REAL NOT NULL"] * len(spec.numeric) + ["TEXT NOT NULL"] * len(spec.text)
        self.incoming = f"temp.incoming_{t}"
        self.create_incoming = (
            f"CREATE TEMP TABLE IF NOT EXISTS incoming_{t} ({', '.join(f'{c} {d}' for c, d in zip(fields, kinds, strict=True))}, "
            f"PRIMARY KEY (ts, {k})) WITHOUT ROWID"
        )
        self.fill_incoming = f"INSERT OR REPLACE INTO {self.incoming} VALUES ({marks})"
        deltas = ", ".join(f"sum(i.{c} - coalesce(r.{c}, 0))" for c in spec.numeric)
        # A bucket new to the rollup takes the incoming rows' min and max, which are all it holds;
        # a stored bucket keeps its own until rollup_extremes reads them again after the upsert.
        incoming_extremes = ", ".join(f"{fn}(i.{c})" for _, fn, c in extremes)
        self.rollup_adjust = (
            f"INSERT INTO {t}_rollup SELECT i.ts / {ROLLUP_MS} * {ROLLUP_MS}, i.{k}, sum(r.ts IS NULL), {deltas}, {incoming_extremes} "
            f"FROM {self.incoming} i LEFT JOIN {t} r ON r.ts = i.ts AND r.{k} = i.{k} WHERE true GROUP BY 1, 2 "
            f"ON CONFLICT (bucket, {k}) DO UPDATE SET n = n + excluded.n, {add_sums}"
        )
        self.upsert = (
            f"INSERT INTO {t} ({', '.join(cols)}) SELECT {', '.join(fields)}, ? FROM {self.incoming} WHERE true "
            f"ON CONFLICT (ts, {k}) DO UPDATE SET {updates}"
        )
        # After the upsert: the min and max of the buckets the batch touched, from their raw rows.
        # The raw table's key is (ts, key): each bucket is read once for all its keys, and only
        # the rollup rows whose min or max changed are written.
        raw_extremes = ", ".join(f"{fn}(r.{c}) AS {col}" for col, fn, c in extremes)
        self.rollup_extremes = (
            f"UPDATE {t}_rollup AS u SET {', '.join(f'{col} = m.{col}' for col, _, _ in extremes)} FROM ("
            f"SELECT r.ts / {ROLLUP_MS} * {ROLLUP_MS} AS bucket, r.{k}, {raw_extremes} "
            f"FROM (SELECT DISTINCT ts / {ROLLUP_MS} * {ROLLUP_MS} AS bucket FROM {self.incoming}) b "
            f"CROSS JOIN {t} r ON r.ts >= b.bucket AND r.ts < b.bucket + {ROLLUP_MS} GROUP BY 1, 2) m "
            f"WHERE u.bucket = m.bucket AND u.{k} = m.{k} AND ({' OR '.join(f'u.{col} != m.{col}' for col, _, _ in extremes)})"
        )


_STATEMENTS = {name: _Statements(spec) for name, spec in TOPICS.items()}


def _fold(width: int, keys: int, rows: tuple) -> tuple:
    """Rollup rows of `width` buckets from finer rows, with numpy: per (bucket, key code) the
    counts and sums added, the lows' min and the highs' max.

    `rows` and the result: (bucket or ts, key codes, counts or None for raw rows, [sums per
    field], [lows per field], [highs per field]); a raw reading is its own sum, low and high."""
    ts, codes, counts, sums, lows, highs = rows
    groups, where = np.unique(ts // width * keys + codes, return_inverse=True)
    size = np.bincount(where)
    # Rows sorted by group, so each group's min and max is one reduceat over its run.
    order = np.argsort(where, kind="stable")
    starts = np.concatenate(([0], np.cumsum(size)[:-1]))
    return (
        groups // keys * width, groups % keys,
        size if counts is None else np.bincount(where, weights=counts).astype(np.int64),
        [np.bincount(where, weights=v) for v in sums],
        [np.minimum.reduceat(v[order], starts) for v in lows], [np.maximum.reduceat(v[order], starts) for v in highs],
    )


def _rollup_rows(names: list[str], rows: tuple) -> list[tuple]:
    """_fold's result as rollup table rows: (bucket, key, n, sums..., min and max of each field...)."""
    bucket, codes, counts, sums, lows, highs = rows
    extremes = [v.tolist() for pair in zip(lows, highs, strict=True) for v in pair]
    keys = [names[i] for i in codes.tolist()]
    return list(zip(bucket.tolist(), keys, counts.tolist(), *(v.tolist() for v in sums), *extremes, strict=True))


def _sums(spec: Topic, batch: Batch) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """The batch's own rollup rows, 10-second and minute (bucket, key, n, sums..., min and max of
    each field...), the minutes it touches (minute_refresh's parameters) and newest ts per key."""
    cols = batch.columns
    ts = cols["ts"]
    names = list(dict.fromkeys(cols[spec.key]))
    index = {name: i for i, name in enumerate(names)}
    codes = np.fromiter(map(index.__getitem__, cols[spec.key]), np.int64, len(ts))
    values = [cols[c] for c in spec.numeric]
    buckets = _fold(ROLLUP_MS, len(names), (ts, codes, None, values, values, values))
    minutes = _fold(MINUTE_MS, len(names), buckets)
    touched = [(m, *range(m, m + MINUTE_MS, ROLLUP_MS), names[code]) for m, code in zip(minutes[0].tolist(), minutes[1].tolist())]
    newest = np.full(len(names), np.iinfo(np.int64).min)
    np.maximum.at(newest, codes, ts)
    latest = list(zip([spec.name] * len(names), names, newest.tolist(), strict=True))
    return _rollup_rows(names, buckets), _rollup_rows(names, minutes), touched, latest


class SQLiteStore(Store):
    def __init__(self, path: str):
        self.path = path
        # One connection per thread: the dashboard reads from several server threads at once.
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if os.path.dirname(self.path):
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                # A threaded HTTP server starts a thread per connection: close the connections of
                # threads that have ended, or they pile up until the process runs out of files.
                alive = [(t, c) for t, c in self._all if t.is_alive()]
                for t, c in self._all:
                    if not t.is_alive():
                        c.close()
                self._all = alive + [(threading.current_thread(), conn)]
        return conn

    def _run(self, fn):
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc

    def ensure_tables(self) -> None:
        script = "\n".join(_schema(spec) for spec in TOPICS.values())
        script += "CREATE TABLE IF NOT EXISTS latest (topic TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (topic, key)) WITHOUT ROWID;"
        script += ALERTS_DDL
        self._run(lambda c: c.executescript(script))
        for spec in TOPICS.values():
            self._run(lambda c, spec=spec: self._upgrade_rollups(c, spec))

    def _upgrade_rollups(self, c: sqlite3.Connection, spec: Topic) -> None:
        """Rebuild the rollups of a database from an earlier version, from the raw table, once.

        Earlier versions kept a 10-second rollup of sums only (no min and max columns) and no
        minute rollup, which ensure_tables() has just created empty; every write fills both, so
        an empty minute rollup beside a filled 10-second one means the same."""
        t = spec.name

        def outdated() -> bool:
            columns = {row[1] for row in c.execute(f"PRAGMA table_info({t}_rollup)")}
            return _extremes(spec)[0][0] not in columns or c.execute(
                f"SELECT EXISTS (SELECT 1 FROM {t}_rollup) AND NOT EXISTS (SELECT 1 FROM {t}_rollup_1m)").fetchone()[0]

        if not outdated():
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            if outdated():  # another process may have rebuilt them while this one waited for the lock
                started = time.monotonic()
                log.info("SQLite %s: rebuilding the rollups of %s from the raw table (an earlier version's: no min and max "
                         "per bucket, no minute rollup); once, writers wait meanwhile", self.path, t)
                c.execute(f"DROP TABLE {t}_rollup")
                c.execute(f"DROP TABLE {t}_rollup_1m")
                for create in _create_rollups(spec).split(";"):
                    c.execute(create)
                c.execute(_STATEMENTS[t].rollup_rebuild)
                c.execute(_STATEMENTS[t].minutes_rebuild)
                log.info("SQLite %s: rollups of %s rebuilt in %.1f s", self.path, t, time.monotonic() - started)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def write(self, spec: Topic, readings: Batch | Sequence[Reading], received_at_ms: int) -> None:
        batch = as_batch(spec, readings)
        n = len(batch)
        if not n:
            return
        sql = _STATEMENTS[spec.name]
        cols = batch.columns
        # Column lists, zipped into rows by executemany's own iteration: no row list is built.
        columns = [cols["ts"].tolist(), cols[spec.key], *(cols[c].tolist() for c in spec.numeric), *(cols[c] for c in spec.text)]
        rollup, minutes, touched, latest = _sums(spec, batch)

        def tx(c: sqlite3.Connection) -> None:
            self._prepare_writes(c)
            # IMMEDIATE: the write lock first, or a read-then-write transaction can fail at once
            # (SQLITE_BUSY_SNAPSHOT) when another writer commits in between.
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("SAVEPOINT batch")
                new = c.executemany(sql.insert_new, zip(*columns, repeat(received_at_ms, n), strict=True)).rowcount
                if new == n:  # every (ts, key) new: add the batch's own sums
                    c.executemany(sql.rollup_add, rollup)
                    c.executemany(sql.minutes_add, minutes)
                else:  # a redelivery: upsert through a temporary table, adjusting the rollups
                    c.execute("ROLLBACK TO batch")
                    c.execute(f"DELETE FROM {sql.incoming}")
                    c.executemany(sql.fill_incoming, zip(*columns, strict=True))
                    c.execute(sql.rollup_adjust)
                    c.execute(sql.upsert, (received_at_ms,))
                    c.execute(sql.rollup_extremes)
                    c.execute(f"DELETE FROM {sql.incoming}")
                    c.executemany(sql.minute_refresh, touched)
                c.execute("RELEASE batch")
                c.executemany(sql.latest, latest)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        self._run(tx)

    def _prepare_writes(self, c: sqlite3.Connection) -> None:
        """Once per connection that writes: its temporary tables and a write-sized cache."""
        if getattr(self._local, "writes_ready", None) is c:
            return
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA cache_size=-65536")  # 64 MiB: the raw table's and rollup's hot pages
        for sql in _STATEMENTS.values():
            c.execute(sql.create_incoming)
        self._local.writes_ready = c

    def _frame(self, spec: Topic, sql: str, params: Sequence, columns: Sequence[str]) -> pd.DataFrame:
        import pandas as pd

        frame = self._run(lambda c: pd.read_sql_query(sql, c, params=list(params)))
        if frame.empty:
            return empty_frame(spec, columns)
        for col in ("ts", "received_at"):
            if col in frame:
                frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True).astype("datetime64[ms, UTC]")
        return frame

    def latest(self, spec: Topic) -> pd.DataFrame:
        sql = (
            f"SELECT t.* FROM latest l JOIN {spec.name} t ON t.ts = l.ts AND t.{spec.key} = l.key "
            f"WHERE l.topic = ? ORDER BY t.{spec.key}"
        )
        return self._frame(spec, sql, [spec.name], spec.columns)

    def since(self, spec: Topic, start: TimeLike, end: TimeLike | None = None) -> pd.DataFrame:
        end_ms = to_ms(end) if end is not None else 2**62
        sql = f"SELECT * FROM {spec.name} WHERE ts >= ? AND ts < ? ORDER BY ts, {spec.key}"
        return self._frame(spec, sql, [to_ms(start), end_ms], spec.columns)

    def range(self, spec: Topic, start: TimeLike, end: TimeLike, max_points: int) -> pd.DataFrame:
        start_ms, end_ms = to_ms(start), to_ms(end)
        columns = spec.series_columns
        step = range_bucket_ms(start_ms, end_ms, max_points)
        t, k, fields = spec.name, spec.key, ", ".join(spec.numeric)
        extremes = _extremes(spec)
        tables = dict(ROLLUPS)

        def rows(widths: Sequence[int], rollup_cols: str, raw_cols: str) -> tuple[str, list[int]]:
            """Every row of [start, end) once: whole rollup buckets inside the window from the
            widest rollup `widths` allows, the partial buckets at its edges from narrower ones
            and raw rows, so no row outside the window is counted or averaged."""
            pieces = _cover(start_ms, end_ms, widths)
            sql = " UNION ALL ".join(
                f"SELECT bucket AS b, {k}, n{rollup_cols} FROM {t}{tables[width]} WHERE bucket >= ? AND bucket < ?" if width
                else f"SELECT ts AS b, {k}, 1 AS n{raw_cols} FROM {t} WHERE ts >= ? AND ts < ?"
                for width, _, _ in pieces
            )
            return sql, [edge for _, lo, hi in pieces for edge in (lo, hi)]

        if end_ms <= start_ms:
            return empty_frame(spec, columns)
        raw_sql = f"SELECT ts, {k}, {fields} FROM {t} WHERE ts >= ? AND ts < ? ORDER BY ts, {k}"
        if step >= ROLLUP_MS:
            # Long ranges: aggregate first and count in the same scan; only a series short enough
            # to draw raw (rare over a long range) costs a second query. The step is whole buckets
            # of the rollup it reads (range_bucket_ms): an edge row then falls in its bucket's step.
            width = MINUTE_MS if step >= 5 * MINUTE_MS else ROLLUP_MS
            # An edge row is its own min and max.
            union, params = rows([w for w, _ in ROLLUPS if w <= width], f", {fields}, {', '.join(col for col, _, _ in extremes)}",
                                 f", {fields}, {', '.join(f'{c} AS {col}' for col, _, c in extremes)}")
            envelope = {c: f"sum({c}) / sum(n) AS {c}" for c in spec.numeric} | {col: f"{fn}({col}) AS {col}" for col, fn, _ in extremes}
            aggregates = ", ".join(envelope[c] for c in envelope_columns(spec)[2:])
            sql = f"SELECT b / {step} * {step} AS ts, {k}, {aggregates}, sum(n) AS n FROM ({union}) GROUP BY 1, {k} ORDER BY 1, {k}"
            frame = self._frame(spec, sql, params, (*columns, "n"))
            if frame.empty:
                return empty_frame(spec, columns)
            if frame.groupby(k)["n"].sum().max() <= max_points:
                return self._frame(spec, raw_sql, [start_ms, end_ms], columns)
            return frame.drop(columns="n")
        union, params = rows([w for w, _ in ROLLUPS], "", "")
        counts = self._run(
            lambda c: c.execute(f"SELECT max(total) FROM (SELECT sum(n) AS total FROM ({union}) GROUP BY {k})", params).fetchone()[0]
        )
        if not counts:
            return empty_frame(spec, columns)
        if counts <= max_points:
            return self._frame(spec, raw_sql, [start_ms, end_ms], columns)
        envelope = {c: f"avg({c}) AS {c}" for c in spec.numeric} | {col: f"{fn}({c}) AS {col}" for col, fn, c in extremes}
        sql = (
            f"SELECT ts / {step} * {step} AS ts, {k}, {', '.join(envelope[c] for c in envelope_columns(spec)[2:])} FROM {t} "
            f"WHERE ts >= ? AND ts < ? GROUP BY 1, {k} ORDER BY 1, {k}"
        )
        return self._frame(spec, sql, [start_ms, end_ms], columns)

    def write_alerts(self, alerts: Sequence[Alert]) -> None:
        rows = [tuple(getattr(a, c) for c in ALERT_COLUMNS) for a in alerts]

        def tx(c: sqlite3.Connection) -> None:
            with c:  # one transaction
                c.executemany(f"INSERT OR REPLACE INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES ({', '.join('?' * len(ALERT_COLUMNS))})", rows)

        if rows:
            self._run(tx)

    def alerts(self, start: TimeLike, end: TimeLike | None = None) -> list[Alert]:
        sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE ts >= ? AND ts < ? ORDER BY ts, rule, sensor"
        params = (to_ms(start), to_ms(end) if end is not None else 2**62)
        rows = self._run(lambda c: c.execute(sql, params).fetchall())
        return [Alert(**dict(zip(ALERT_COLUMNS, row, strict=True))) for row in rows]

    def latest_alerts(self, before: TimeLike) -> list[Alert]:
        sql = (f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts a WHERE ts < ?1 AND ts = "
               "(SELECT max(ts) FROM alerts b WHERE b.rule = a.rule AND b.sensor = a.sensor AND b.ts < ?1) ORDER BY ts, rule, sensor")
        rows = self._run(lambda c: c.execute(sql, (to_ms(before),)).fetchall())
        return [Alert(**dict(zip(ALERT_COLUMNS, row, strict=True))) for row in rows]

    def count(self, spec: Topic) -> int:
        return self._run(lambda c: c.execute(f"SELECT count(*) FROM {spec.name}").fetchone()[0])

    def ping(self) -> None:
        # What a history read needs: the file, through its locks, and each table in it (SELECT 1
        # touches neither, so a locked or unreadable store would pass). On a connection of its
        # own with a short busy timeout: a health check must say "locked" within seconds, not
        # after the 30 s a writer's connection waits out.
        try:
            c = sqlite3.connect(self.path, timeout=PING_TIMEOUT_S)
            try:
                tables = {row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                for table in tables & set(TOPICS):
                    c.execute(f"SELECT ts FROM {table} ORDER BY ts DESC LIMIT 1").fetchone()
            finally:
                c.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
