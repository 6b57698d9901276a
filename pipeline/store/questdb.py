"""QuestDB backend: ILP over HTTP for writes, SQL over PG wire for tables and reads.

Writes go through one long-lived `questdb.Sender` (ILP/HTTP, auto-flush off): each write() adds
the batch as a DataFrame and flushes it, so the rows are committed to the table's WAL when
write() returns. Tables are WAL tables with DEDUP UPSERT KEYS(ts, key), which makes re-sent
readings harmless: the last value wins and the count stays.

WAL tables make committed rows visible to queries 10-110 ms after the flush returns: a read
right after write() may not see the rows yet (tests poll).

Over PG wire QuestDB returns timestamps naive (they are UTC) and must be given naive UTC
datetimes as parameters; reads localize the results to UTC so both backends return the same
shapes (see pipeline.store.base).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import psycopg
from questdb import QuestDBError, Sender

from pipeline.config import QUESTDB_OWN_KEYS, questdb_conf, questdb_pg_params, split_host_port
from pipeline.schema import TOPICS, Batch, Reading, Topic, as_batch
from pipeline.store.base import Store, StoreUnavailable, TimeLike, bucket_ms, empty_frame, to_ms

log = logging.getLogger("store.questdb")

_EPOCH = datetime(1970, 1, 1)
_MAX_INT32 = 2**31 - 1
_IDLE_CONNECTIONS = 4  # PG connections kept open for reuse; more are opened when threads need them
PG_DEFAULTS = {"port": "8812", "user": "admin", "password": "quest", "dbname": "qdb"}  # QuestDB's own
HELD_TIMEOUT_S = 10.0  # longest the first batch into a (re)created table may take to show (WAL: 10-110 ms)


def sender_conf(store_url: str) -> str:
    """The `questdb` client configuration string the writers use for a QuestDB STORE_URL.

    `questdb://HOST[:PORT]` is `http::addr=HOST:PORT;` (9000 by default); a client string
    (`http::...`, `https::...`) is used as written. Added: auto_flush=off (nothing leaves before
    write() flushes) and, unless given, retry_timeout=5000 (retries on transient HTTP errors are
    bounded, so a sick server surfaces as StoreUnavailable within seconds).
    """
    if store_url.startswith("questdb://"):
        parsed = urlparse(store_url)
        conf = f"http::addr={parsed.hostname}:{parsed.port or 9000};"
    else:
        trailing = len(store_url) - len(store_url.rstrip(";"))
        conf = store_url if trailing % 2 else store_url + ";"  # `;;` is an escaped `;`, not the end
    _, given = questdb_conf(conf)
    return conf + "".join(f"{k}={v};" for k, v in QUESTDB_OWN_KEYS.items() if k not in given)


def pg_params(store_url: str, pg_url: str = "") -> dict[str, str]:
    """libpq parameters for QuestDB's PG wire: what QUESTDB_PG_URL gives, over QuestDB's defaults on STORE_URL's host."""
    ilp_host, _ = split_host_port(questdb_conf(sender_conf(store_url))[1]["addr"])
    return {"host": ilp_host, **PG_DEFAULTS, **(questdb_pg_params(pg_url) if pg_url else {})}


def _naive_utc(t: TimeLike) -> datetime:
    """The naive UTC datetime QuestDB wants as a bind parameter (aware ones break it)."""
    return _EPOCH + timedelta(milliseconds=to_ms(t))


def _ms_to_us(values) -> np.ndarray:
    """Epoch ms -> naive datetime64[us], which the ILP client sends as UTC microseconds.

    The client takes us or ns columns, not ms. Microseconds are TIMESTAMP's own precision and go
    out with the `t` suffix every server version reads (ns would go out as `n` under protocol 2).
    """
    return np.asarray(values, dtype="int64").astype("datetime64[ms]").astype("datetime64[us]")


def ilp_frame(spec: Topic, batch: Batch, received_at_ms: int) -> pd.DataFrame:
    """The DataFrame `sender.dataframe()` sends: the batch's columns as they are, plus received_at."""
    cols = batch.columns
    data = {"ts": _ms_to_us(cols["ts"]), spec.key: cols[spec.key]}
    for c in (*spec.numeric, *spec.text):
        data[c] = cols[c]
    data["received_at"] = _ms_to_us(np.full(len(batch), received_at_ms, dtype="int64"))
    frame = pd.DataFrame(data, copy=False)
    # Within one batch the last reading of a (ts, key) wins, as in SQLite's upsert; a batch
    # rarely repeats one (a redelivery), so look before paying for drop_duplicates.
    if frame.duplicated(subset=["ts", spec.key]).any():
        frame = frame.drop_duplicates(subset=["ts", spec.key], keep="last")
    return frame


def _sample_unit(step_ms: int) -> str:
    """SAMPLE BY interval for a bucket of step_ms, widened to whole seconds if it overflows `T`."""
    if step_ms <= _MAX_INT32:
        return f"{step_ms}T"
    return f"{-(-step_ms // 1000)}s"  # rounding up keeps the bucket count within max_points


def _ddl(spec: Topic) -> str:
    cols = ", ".join(
        ["ts TIMESTAMP", f"{spec.key} SYMBOL"]
        + [f"{c} DOUBLE" for c in spec.numeric]
        + [f"{c} SYMBOL" for c in spec.text]
        + ["received_at TIMESTAMP"]
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {spec.name} ({cols}) "
        f"TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, {spec.key})"
    )


def _run(conn: psycopg.Connection, sql: str, params: Sequence | None) -> tuple[list[str], list[tuple]]:
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        if cur.description is None:  # DDL
            return [], []
        return [d.name for d in cur.description], cur.fetchall()


class QuestDBStore(Store):
    def __init__(self, sender_conf: str, pg_params: dict[str, str], *, connect_timeout: int = 3):
        """`sender_conf`: the ILP client string writes use; `pg_params`: libpq parameters for reads and DDL.

        Nothing connects here: readers (the dashboard) open PG connections only, writers also the sender.
        """
        self._sender_conf = sender_conf
        self._http_where = questdb_conf(sender_conf)[1]["addr"]  # for messages: never the credentials
        self._pg_params = {"connect_timeout": str(connect_timeout), "application_name": "pipeline-store", **pg_params}
        self._pg_where = f"{self._pg_params['host']}:{self._pg_params['port']}"
        self._sender: Sender | None = None
        self._write_lock = threading.Lock()  # a Sender is not thread-safe
        self._idle: list[psycopg.Connection] = []
        self._pool_lock = threading.Lock()
        self._tables_ready = False
        # The table each write goes to, by id (see "Tables are ours" below): checked to have our schema,
        # and trusted once a batch written into it has been read back.
        self._checked: dict[str, int] = {}
        self._trusted: dict[str, int] = {}
        self._name_column: str | None = None  # tables()' name column: table_name (older servers: name)

    @classmethod
    def from_urls(cls, store_url: str, pg_url: str = "") -> QuestDBStore:
        """The store of a QuestDB STORE_URL and QUESTDB_PG_URL (empty: QuestDB's defaults on STORE_URL's host)."""
        return cls(sender_conf(store_url), pg_params(store_url, pg_url))

    # ---- PG wire -----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        try:
            # autocommit: QuestDB has no use for transactions here; prepare_threshold=None: no
            # server-side prepared statements, so psycopg never sends DEALLOCATE (raises on 9.2).
            return psycopg.connect(autocommit=True, prepare_threshold=None, **self._pg_params)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"QuestDB at {self._pg_where} (PG wire) is not reachable: {exc}") from exc

    def _acquire(self) -> tuple[psycopg.Connection, bool]:
        """An idle pooled connection (reused=True) or a new one."""
        with self._pool_lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: psycopg.Connection) -> None:
        if not conn.closed and not conn.broken:
            with self._pool_lock:
                if len(self._idle) < _IDLE_CONNECTIONS:
                    self._idle.append(conn)
                    return
        conn.close()

    def _query(self, sql: str, params: Sequence | None = None) -> tuple[list[str], list[tuple]]:
        conn, reused = self._acquire()
        try:
            try:
                result = _run(conn, sql, params)
            except psycopg.OperationalError:
                if not reused:
                    raise
                # A pooled connection can outlive the server (restart, network): one more try on a
                # fresh connection (every statement here is a read or idempotent DDL).
                conn.close()
                conn = self._connect()
                result = _run(conn, sql, params)
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailable(f"QuestDB at {self._pg_where} (PG wire): {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return result

    def _frame(
        self, spec: Topic, sql: str, params: Sequence, columns: Sequence[str], order: Sequence[str] = ()
    ) -> pd.DataFrame:
        names, rows = self._query(sql, params)
        if not rows:
            return empty_frame(spec, columns)
        frame = pd.DataFrame.from_records(rows, columns=names)
        for col in frame.columns:
            if col in ("ts", "received_at"):
                # Naive UTC from PG wire -> the UTC-aware millisecond dtype SQLiteStore returns.
                frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[ms, UTC]")
            elif col in spec.numeric:
                frame[col] = pd.to_numeric(frame[col]).astype("float64")  # NaN arrives as None
        frame = frame[list(columns)]
        # Same order as SQLiteStore whatever the server did (SAMPLE BY output is not ordered).
        return frame.sort_values(order, ignore_index=True, kind="stable") if order else frame

    # ---- Store -------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        for spec in TOPICS.values():
            self._query(_ddl(spec))
        self._tables_ready = True

    def _open_sender(self) -> Sender:
        if self._sender is None:
            sender = Sender.from_conf(self._sender_conf)
            try:
                sender.establish()  # ILP/HTTP: asks /settings for the protocol version
            except QuestDBError:
                sender.close(flush=False)
                raise
            self._sender = sender
        return self._sender

    def _drop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close(flush=False)  # whatever a failed batch left in the buffer goes with it
            except QuestDBError:
                pass

    def write(self, spec: Topic, readings: Batch | Sequence[Reading], received_at_ms: int) -> None:
        batch = as_batch(spec, readings)
        n = len(batch)
        if not n:
            return
        if not self._tables_ready:
            # A table auto-created by ILP would name its timestamp `timestamp` and have no dedup.
            self.ensure_tables()
        frame = ilp_frame(spec, batch, received_at_ms)
        with self._write_lock:
            try:
                sender = self._open_sender()
                sender.dataframe(frame, table_name=spec.name, symbols=[spec.key, *spec.text], at="ts")
                sender.flush()  # HTTP: returns once QuestDB has committed the rows to the WAL
            except QuestDBError as exc:
                self._drop_sender()
                raise StoreUnavailable(
                    f"QuestDB at {self._http_where} (ILP/HTTP) did not take {len(frame)} {spec.name} rows: {exc}"
                ) from exc

    def latest(self, spec: Topic) -> pd.DataFrame:
        sql = f"SELECT {', '.join(spec.columns)} FROM {spec.name} LATEST ON ts PARTITION BY {spec.key}"
        return self._frame(spec, sql, [], spec.columns, order=[spec.key])

    def since(self, spec: Topic, start: TimeLike, end: TimeLike | None = None) -> pd.DataFrame:
        where, params = "ts >= %s", [_naive_utc(start)]
        if end is not None:
            where, params = where + " AND ts < %s", params + [_naive_utc(end)]
        sql = f"SELECT {', '.join(spec.columns)} FROM {spec.name} WHERE {where} ORDER BY ts, {spec.key}"
        return self._frame(spec, sql, params, spec.columns, order=["ts", spec.key])

    def range(self, spec: Topic, start: TimeLike, end: TimeLike, max_points: int) -> pd.DataFrame:
        start_ms, end_ms = to_ms(start), to_ms(end)
        columns = spec.series_columns
        step = bucket_ms(start_ms, end_ms, max_points)
        if end_ms <= start_ms:
            return empty_frame(spec, columns)
        k, params = spec.key, [_naive_utc(start_ms), _naive_utc(end_ms)]
        _, counts = self._query(
            f"SELECT {k}, count(*) AS n FROM {spec.name} WHERE ts >= %s AND ts < %s GROUP BY {k}", params
        )
        most = max((n for _, n in counts), default=0)
        if most == 0:
            return empty_frame(spec, columns)
        if most <= max_points:
            sql = (
                f"SELECT {', '.join(columns)} FROM {spec.name} WHERE ts >= %s AND ts < %s "
                f"ORDER BY ts, {k}"
            )
            return self._frame(spec, sql, params, columns, order=["ts", k])
        # Keyed SAMPLE BY: one row per (bucket, key) with data; ts is the bucket start. Buckets are
        # calendar-aligned (the default since 7.4), and bucket_ms() allows any alignment.
        means = ", ".join(f"avg({c}) AS {c}" for c in spec.numeric)
        sql = (
            f"SELECT ts, {k}, {means} FROM {spec.name} WHERE ts >= %s AND ts < %s "
            f"SAMPLE BY {_sample_unit(step)}"
        )
        return self._frame(spec, sql, params, columns, order=["ts", k])

    def count(self, spec: Topic) -> int:
        _, rows = self._query(f"SELECT count(*) FROM {spec.name}")
        return int(rows[0][0])

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        with self._write_lock:
            sender, self._sender = self._sender, None
            if sender is not None:
                try:
                    sender.close()  # flushes what is buffered (nothing, after a successful write)
                except QuestDBError:
                    pass
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
