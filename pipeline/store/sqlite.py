"""SQLite backend: the embedded default, one file shared safely by several processes (WAL).

Each topic has a raw table keyed on (ts, key) like QuestDB's DEDUP UPSERT KEYS, and a rollup
of 10-second sums kept exact by triggers, also on upsert. A 7-day chart reads the rollup
instead of scanning millions of raw rows: that is what keeps long ranges fast.
"""
from __future__ import annotations

import math
import os
import sqlite3
import threading
from operator import attrgetter
from typing import Sequence

import pandas as pd

from pipeline.schema import TOPICS, Topic, Reading
from pipeline.store.base import Store, StoreUnavailable, TimeLike, bucket_ms, empty_frame, to_ms

ROLLUP_MS = 10_000


def _schema(spec: Topic) -> str:
    t, k = spec.name, spec.key
    cols = ", ".join(
        [f"{c} REAL NOT NULL" for c in spec.numeric] + [f"{c} TEXT NOT NULL" for c in spec.text]
    )
    sums = ", ".join(f"{c} REAL NOT NULL" for c in spec.numeric)
    add = ", ".join(f"new.{c}" for c in spec.numeric)
    accumulate = ", ".join(f"{c} = {c} + excluded.{c}" for c in spec.numeric)
    adjust = ", ".join(f"{c} = {c} - old.{c} + new.{c}" for c in spec.numeric)
    bucket = f"new.ts / {ROLLUP_MS} * {ROLLUP_MS}"
    return f"""
    CREATE TABLE IF NOT EXISTS {t} (
        ts INTEGER NOT NULL, {k} TEXT NOT NULL, {cols}, received_at INTEGER NOT NULL,
        PRIMARY KEY (ts, {k})) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS {t}_rollup (
        bucket INTEGER NOT NULL, {k} TEXT NOT NULL, n INTEGER NOT NULL, {sums},
        PRIMARY KEY (bucket, {k})) WITHOUT ROWID;
    CREATE TRIGGER IF NOT EXISTS {t}_rollup_insert AFTER INSERT ON {t} BEGIN
        INSERT INTO {t}_rollup VALUES ({bucket}, new.{k}, 1, {add})
        ON CONFLICT (bucket, {k}) DO UPDATE SET n = n + 1, {accumulate};
    END;
    CREATE TRIGGER IF NOT EXISTS {t}_rollup_update AFTER UPDATE ON {t} BEGIN
        UPDATE {t}_rollup SET {adjust} WHERE bucket = {bucket} AND {k} = new.{k};
    END;
    """


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

    def write(self, spec: Topic, readings: Sequence[Reading], received_at_ms: int) -> None:
        if not readings:
            return
        fields = spec.columns[:-1]
        get = attrgetter(*fields)
        rows = [(*get(r), received_at_ms) for r in readings]
        updates = ", ".join(f"{c} = excluded.{c}" for c in spec.columns[2:])
        sql = (
            f"INSERT INTO {spec.name} ({', '.join(spec.columns)}) VALUES ({', '.join('?' * len(spec.columns))}) "
            f"ON CONFLICT (ts, {spec.key}) DO UPDATE SET {updates}"
        )
        newest: dict[str, int] = {}
        for r in rows:
            if r[0] > newest.get(r[1], -1):
                newest[r[1]] = r[0]

        def tx(c: sqlite3.Connection) -> None:
            with c:  # one transaction: rows, rollup (by trigger) and latest land together
                c.executemany(sql, rows)
                c.executemany(
                    "INSERT INTO latest VALUES (?, ?, ?) ON CONFLICT (topic, key) "
                    "DO UPDATE SET ts = excluded.ts WHERE excluded.ts > latest.ts",
                    [(spec.name, k, ts) for k, ts in newest.items()],
                )

        self._run(tx)

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
        self._run(lambda c: c.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
