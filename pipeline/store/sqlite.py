"""SQLite backend: the embedded default, one file shared safely by several processes (WAL).

Each topic has a raw table keyed on (ts, key) like QuestDB's DEDUP UPSERT KEYS, and a rollup
of 10-second sums kept exact on every write, upserts included. A 7-day chart reads the rollup
instead of scanning millions of raw rows: that is what keeps long ranges fast.

A write is one transaction over the batch's columns. Usually every (ts, key) is new: the rows go
in with one `executemany` of a plain INSERT, and the rollup gets the batch's own sums per
(10 s bucket, key), added up with numpy (a few hundred upserts instead of a trigger per row,
which cost half of the insert). If any (ts, key) was already stored or comes twice in the batch
(a redelivery), that attempt is rolled back to a savepoint and the batch goes through a
temporary table instead: the last reading of a (ts, key) wins, and the rollup is adjusted by
the difference to the rows it replaces, in SQL.
"""
from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from itertools import repeat

import numpy as np
import pandas as pd

from pipeline.schema import TOPICS, Batch, Reading, Topic, as_batch
from pipeline.store.base import Store, StoreUnavailable, TimeLike, bucket_ms, empty_frame, to_ms

ROLLUP_MS = 10_000


def _schema(spec: Topic) -> str:
    t, k = spec.name, spec.key
    cols = ", ".join(
        [f"{c} REAL NOT NULL" for c in spec.numeric] + [f"{c} TEXT NOT NULL" for c in spec.text]
    )
    sums = ", ".join(f"{c} REAL NOT NULL" for c in spec.numeric)
    return f"""
    CREATE TABLE IF NOT EXISTS {t} (
        ts INTEGER NOT NULL, {k} TEXT NOT NULL, {cols}, received_at INTEGER NOT NULL,
        PRIMARY KEY (ts, {k})) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS {t}_rollup (
        bucket INTEGER NOT NULL, {k} TEXT NOT NULL, n INTEGER NOT NULL, {sums},
        PRIMARY KEY (bucket, {k})) WITHOUT ROWID;
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
        self.rollup_add = (
            f"INSERT INTO {t}_rollup VALUES (?, ?, ?, {', '.join('?' * len(spec.numeric))}) ON CONFLICT (bucket, {k}) "
            f"DO UPDATE SET n = n + excluded.n, {', '.join(f'{c} = {c} + excluded.{c}' for c in spec.numeric)}"
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
        self.rollup_adjust = (
            f"INSERT INTO {t}_rollup SELECT i.ts / {ROLLUP_MS} * {ROLLUP_MS}, i.{k}, sum(r.ts IS NULL), {deltas} "
            f"FROM {self.incoming} i LEFT JOIN {t} r ON r.ts = i.ts AND r.{k} = i.{k} WHERE true GROUP BY 1, 2 "
            f"ON CONFLICT (bucket, {k}) DO UPDATE SET n = n + excluded.n, {', '.join(f'{c} = {c} + excluded.{c}' for c in spec.numeric)}"
        )
        self.upsert = (
            f"INSERT INTO {t} ({', '.join(cols)}) SELECT {', '.join(fields)}, ? FROM {self.incoming} WHERE true "
            f"ON CONFLICT (ts, {k}) DO UPDATE SET {updates}"
        )


_STATEMENTS = {name: _Statements(spec) for name, spec in TOPICS.items()}


def _sums(spec: Topic, batch: Batch) -> tuple[list[tuple], list[tuple]]:
    """The batch's rollup rows (bucket, key, n, sums...) and newest ts per key, with numpy."""
    cols = batch.columns
    ts = cols["ts"]
    names = list(dict.fromkeys(cols[spec.key]))
    index = {name: i for i, name in enumerate(names)}
    codes = np.fromiter(map(index.__getitem__, cols[spec.key]), np.int64, len(ts))
    groups, where = np.unique((ts // ROLLUP_MS) * len(names) + codes, return_inverse=True)
    counts = np.bincount(where)
    sums = [np.bincount(where, weights=cols[c]).tolist() for c in spec.numeric]
    keys = [names[i] for i in (groups % len(names)).tolist()]
    rollup = list(zip((groups // len(names) * ROLLUP_MS).tolist(), keys, counts.tolist(), *sums, strict=True))
    newest = np.full(len(names), np.iinfo(np.int64).min)
    np.maximum.at(newest, codes, ts)
    latest = list(zip([spec.name] * len(names), names, newest.tolist(), strict=True))
    return rollup, latest



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
        self._run(lambda c: c.executescript(script))

    def write(self, spec: Topic, readings: Batch | Sequence[Reading], received_at_ms: int) -> None:
        batch = as_batch(spec, readings)
        n = len(batch)
        if not n:
            return
        sql = _STATEMENTS[spec.name]
        cols = batch.columns
        # Column lists, zipped into rows by executemany's own iteration: no row list is built.
        columns = [cols["ts"].tolist(), cols[spec.key], *(cols[c].tolist() for c in spec.numeric), *(cols[c] for c in spec.text)]
        rollup, latest = _sums(spec, batch)

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
                else:  # a redelivery: upsert through a temporary table, adjusting the rollup
                    c.execute("ROLLBACK TO batch")
                    c.execute(f"DELETE FROM {sql.incoming}")
                    c.executemany(sql.fill_incoming, zip(*columns, strict=True))
                    c.execute(sql.rollup_adjust)
                    c.execute(sql.upsert, (received_at_ms,))
                    c.execute(f"DELETE FROM {sql.incoming}")
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
        step = bucket_ms(start_ms, end_ms, max_points)
        t, k, fields = spec.name, spec.key, ", ".join(spec.numeric)
        # Whole rollup buckets inside [start, end) come from the rollup; the partial buckets at
        # the two edges come from raw rows, so no row outside the window is counted or averaged.
        lo = -(-start_ms // ROLLUP_MS) * ROLLUP_MS  # first bucket starting at or after start
        hi = end_ms // ROLLUP_MS * ROLLUP_MS  # buckets before hi end at or before end
        head_end, tail_start = (lo, hi) if lo <= hi else (end_ms, end_ms)  # window inside one bucket
        pieces = (
            f"SELECT bucket AS b, {k}, n, {fields} FROM {t}_rollup WHERE bucket >= ? AND bucket < ? "
            f"UNION ALL SELECT ts, {k}, 1, {fields} FROM {t} WHERE ts >= ? AND ts < ? "
            f"UNION ALL SELECT ts, {k}, 1, {fields} FROM {t} WHERE ts >= ? AND ts < ?"
        )
        piece_params = [lo, hi, start_ms, head_end, tail_start, end_ms]
        raw_sql = f"SELECT ts, {k}, {fields} FROM {t} WHERE ts >= ? AND ts < ? ORDER BY ts, {k}"
        if step >= ROLLUP_MS:
            # Long ranges: aggregate first and count in the same scan; only a series short enough
            # to draw raw (rare over a long range) costs a second query.
            step = math.ceil(step / ROLLUP_MS) * ROLLUP_MS  # an edge row falls in its rollup bucket's step
            means = ", ".join(f"sum({c}) / sum(n) AS {c}" for c in spec.numeric)
            sql = f"SELECT b / {step} * {step} AS ts, {k}, {means}, sum(n) AS n FROM ({pieces}) GROUP BY 1, {k} ORDER BY 1, {k}"
            frame = self._frame(spec, sql, piece_params, (*columns, "n"))
            if frame.empty:
                return empty_frame(spec, columns)
            if frame.groupby(k)["n"].sum().max() <= max_points:
                return self._frame(spec, raw_sql, [start_ms, end_ms], columns)
            return frame.drop(columns="n")
        counts = self._run(
            lambda c: c.execute(
                f"SELECT max(total) FROM (SELECT sum(n) AS total FROM ({pieces}) GROUP BY {k})", piece_params
            ).fetchone()[0]
        )
        if not counts:
            return empty_frame(spec, columns)
        if counts <= max_points:
            return self._frame(spec, raw_sql, [start_ms, end_ms], columns)
        means = ", ".join(f"avg({c}) AS {c}" for c in spec.numeric)
        sql = (
            f"SELECT ts / {step} * {step} AS ts, {k}, {means} FROM {t} "
            f"WHERE ts >= ? AND ts < ? GROUP BY 1, {k} ORDER BY 1, {k}"
        )
        return self._frame(spec, sql, [start_ms, end_ms], columns)

    def count(self, spec: Topic) -> int:
        return self._run(lambda c: c.execute(f"SELECT count(*) FROM {spec.name}").fetchone()[0])

    def ping(self) -> None:
        # What a history read needs: the file, through its locks, and each table in it (SELECT 1
        # touches neither, so a locked or unreadable store would pass).
        def read(c) -> None:
            tables = {row[0] for row in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in tables & set(TOPICS):
                c.execute(f"SELECT ts FROM {table} ORDER BY ts DESC LIMIT 1").fetchone()

        self._run(read)

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
