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

from pipeline.alerts import Alert
from pipeline.config import QUESTDB_OWN_KEYS, questdb_conf, questdb_pg_params, split_host_port
from pipeline.schema import TOPICS, Batch, Reading, Topic, as_batch
from pipeline.store.base import Store, StoreUnavailable, TimeLike, empty_frame, envelope_columns, range_bucket_ms, to_ms

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
    n = len(batch)
    # SYMBOL columns go as categoricals built from codes: a list of str would make pandas 3 build
    # a string array per batch, and the client would encode each row's string again.
    key, key_codes = _categorical(cols[spec.key])
    data = {"ts": _ms_to_us(cols["ts"]), spec.key: key}
    for c in spec.numeric:
        data[c] = cols[c]
    for c in spec.text:
        data[c] = _categorical(cols[c])[0]
    data["received_at"] = _ms_to_us(np.full(n, received_at_ms, dtype="int64"))
    frame = pd.DataFrame(data, copy=False)
    # Within one batch the last reading of a (ts, key) wins, as in SQLite's upsert; a batch
    # rarely repeats one (a redelivery), so look (on int64s) before paying for drop_duplicates.
    if len(np.unique(cols["ts"] * len(key.categories) + key_codes)) != n:
        frame = frame.drop_duplicates(subset=["ts", spec.key], keep="last")
    return frame


def _categorical(values: list[str]) -> tuple[pd.Categorical, np.ndarray]:
    names = list(dict.fromkeys(values))
    index = {name: i for i, name in enumerate(names)}
    codes = np.fromiter(map(index.__getitem__, values), np.int32 if len(names) < 2**31 else np.int64, len(values))
    return pd.Categorical.from_codes(codes, categories=names), codes


def _sample_unit(step_ms: int) -> str:
    """SAMPLE BY interval for a bucket of step_ms, in seconds if it overflows `T` (a step that long
    is whole minutes: range_bucket_ms)."""
    if step_ms <= _MAX_INT32:
        return f"{step_ms}T"
    return f"{step_ms // 1000}s"


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


# Alerts are few: written with INSERT over PG wire (no ILP table to guard). DEDUP on the designated
# timestamp and what names a change (the episode's start follows from them), so a change written
# again overwrites itself.
ALERTS_DDL = (
    "CREATE TABLE IF NOT EXISTS alerts (ts TIMESTAMP, rule SYMBOL, sensor SYMBOL, topic SYMBOL, state SYMBOL, "
    "since TIMESTAMP, seen TIMESTAMP, summary VARCHAR, value DOUBLE) "
    "TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, rule, sensor, state)"
)
ALERT_COLUMNS = ("ts", "rule", "sensor", "topic", "state", "since", "seen", "summary", "value")


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
            elif col in envelope_columns(spec)[2:]:  # the numeric fields, and their _min and _max when downsampled
                frame[col] = pd.to_numeric(frame[col]).astype("float64")  # NaN arrives as None
        frame = frame[list(columns)]
        # Same order as SQLiteStore whatever the server did (SAMPLE BY output is not ordered).
        return frame.sort_values(order, ignore_index=True, kind="stable") if order else frame

    # ---- Store -------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        for spec in TOPICS.values():
            self._query(_ddl(spec))
        self._query(ALERTS_DDL)
        self._tables_ready = True

    # ---- Tables are ours: a write never lands in a table ILP made, and is held before write() returns.
    #
    # A table that disappears under a running writer (DROP TABLE, or QuestDB restarted on an empty
    # volume) is recreated by ILP with QuestDB's defaults: designated timestamp `timestamp`, no `ts`,
    # no DEDUP (reads fail with `Invalid column: ts`, re-sent batches are stored twice); and 9.2.3
    # acknowledged the first batch after a DROP without storing it. So every write():
    #   1. writes into a table known by its id (tables().id, which QuestDB never reuses on a server):
    #      unless this store already knows it, it is looked up; a table of the wrong shape (designated
    #      timestamp not `ts`, not WAL, no DEDUP) is renamed aside to `<table>_misshapen_<id>` (its
    #      rows are kept: they are batches no writer committed, or were written before this check),
    #      and a missing one is created in SQL with the right schema;
    #   2. after the flush, looks the table up again (one PG round trip): if it is gone, has another
    #      id or the wrong shape, the batch may be in a dropped table, in ILP's table or nowhere, so
    #      write() raises StoreUnavailable: the writer does not commit and writes it again (the
    #      upsert makes that harmless) through a new sender (the old connection may still hold the
    #      dropped table's writer), into a table step 1 made right;
    #   3. the first batch into a table id (after a start, a re-creation or any error) is read back
    #      before write() returns: its last row with this write's received_at must show within
    #      HELD_TIMEOUT_S (WAL tables show rows 10-110 ms after the flush; one transaction shows
    #      whole). That catches an acknowledgement into a stale writer even when the table's id did
    #      not change under us; later batches into the same id cost only step 2.
    # A drop after step 2 deletes rows that were stored, like any drop after a commit.
    # Servers set with line.auto.create.new.tables=false refuse ILP into a missing table instead: the
    # write fails, and the retry creates the table in step 1.

    def _table_row(self, name: str) -> tuple | None:
        """(id, designated timestamp, WAL, dedup) of a table, or None if there is none."""
        if self._name_column is None:
            columns, _ = self._query("SELECT * FROM tables() LIMIT 1")
            self._name_column = "table_name" if "table_name" in columns else "name"
        _, rows = self._query(
            f"SELECT id, designatedTimestamp, walEnabled, dedup FROM tables() WHERE {self._name_column} = '{name}'"
        )
        return tuple(rows[0]) if rows else None

    @staticmethod
    def _shape_problem(row: tuple | None) -> str | None:
        if row is None:
            return "it does not exist"
        _, designated, wal, dedup = row
        if designated != "ts":
            return f"its designated timestamp is {designated!r}, not 'ts' (ILP made it)"
        if not wal or not dedup:
            return "it is not a WAL table with DEDUP"
        return None

    def _table_for_write(self, spec: Topic) -> int:
        """The id of spec's table, made right first if it is missing or misshapen (step 1)."""
        known = self._trusted.get(spec.name) or self._checked.get(spec.name)
        if known is not None:
            return known
        row = self._table_row(spec.name)
        problem = self._shape_problem(row)
        if row is not None and problem:
            aside = f"{spec.name}_misshapen_{row[0]}"
            log.warning("QuestDB table %s is not ours (%s): renaming it to %s and creating it again", spec.name, problem, aside)
            self._query(f"RENAME TABLE {spec.name} TO {aside}")
        if problem:
            self._query(_ddl(spec))
            row = self._table_row(spec.name)
            problem = self._shape_problem(row)
            if problem:  # ILP or another writer got in between: the retry looks again
                raise StoreUnavailable(f"QuestDB table {spec.name} could not be made right: {problem}")
        self._checked[spec.name] = row[0]
        return row[0]

    def _check_held(self, spec: Topic, table_id: int, frame: pd.DataFrame, received_at_ms: int) -> None:
        """Steps 2 and 3: StoreUnavailable unless the frame just flushed is in our table."""
        row = self._table_row(spec.name)
        problem = self._shape_problem(row)
        if problem or row[0] != table_id:
            self._drop_sender()
            why = problem or f"it was replaced (id {table_id} -> {row[0]})"
            raise StoreUnavailable(f"QuestDB table {spec.name} changed under the write ({why}): {len(frame)} rows not held, "
                                   "written again into a table with the right schema")
        if self._trusted.get(spec.name) == table_id:
            return
        # The batch's last reading is always sent (within a batch the last of a (ts, key) wins),
        # as the frame's last row.
        params = [frame["ts"].iloc[-1].to_pydatetime(), str(frame[spec.key].iloc[-1])]
        received = _naive_utc(received_at_ms)
        sql = f"SELECT received_at FROM {spec.name} WHERE ts = %s AND {spec.key} = %s"
        deadline = time.monotonic() + HELD_TIMEOUT_S
        while received not in (r[0] for r in self._query(sql, params)[1]):
            if time.monotonic() >= deadline:
                self._drop_sender()
                raise StoreUnavailable(
                    f"QuestDB acknowledged {len(frame)} {spec.name} rows that did not show within {HELD_TIMEOUT_S:.0f} s "
                    "(is the table suspended? see wal_tables()): written again")
            time.sleep(0.02)
        self._trusted[spec.name] = table_id

    def _forget_table(self, spec: Topic) -> None:
        self._drop_sender()
        self._checked.pop(spec.name, None)
        self._trusted.pop(spec.name, None)

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
        if len(batch):
            self.write_prepared(spec, ilp_frame(spec, batch, received_at_ms), received_at_ms)

    @staticmethod
    def prepare(spec: Topic, batch: Batch, received_at_ms: int) -> pd.DataFrame | None:
        """The batch's ILP frame, built in the writer: the write process then only sends it
        (building it there took about as long as sending it: docs/performance.md)."""
        return ilp_frame(spec, batch, received_at_ms) if len(batch) else None

    def write_prepared(self, spec: Topic, frame: pd.DataFrame | None, received_at_ms: int) -> None:
        """Send an ilp_frame() and make sure the table holds it (the checks above)."""
        if frame is None or not len(frame):
            return
        with self._write_lock:
            try:
                table_id = self._table_for_write(spec)  # ours, by id: created in SQL, never by ILP
                sender = self._open_sender()
                sender.dataframe(frame, table_name=spec.name, symbols=[spec.key, *spec.text], at="ts")
                sender.flush()  # HTTP: returns once QuestDB has committed the rows to the WAL
                self._check_held(spec, table_id, frame, received_at_ms)
            except QuestDBError as exc:
                self._forget_table(spec)
                raise StoreUnavailable(
                    f"QuestDB at {self._http_where} (ILP/HTTP) did not take {len(frame)} {spec.name} rows: {exc}"
                ) from exc
            except BaseException:
                self._forget_table(spec)  # after any failure, check the table from scratch
                raise

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
        step = range_bucket_ms(start_ms, end_ms, max_points)
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
        # Keyed SAMPLE BY: one row per (bucket, key) with data (no FILL: an empty bucket has no
        # row); ts is the bucket start. The same buckets as SQLite's: range_bucket_ms wide (a
        # plain bucket_ms step gave 12 rows where SQLite gave 10), at multiples of the width since
        # the epoch, which is where ALIGN TO CALENDAR puts buckets of T and s units in UTC
        # (explicit: a server can be set to align to the first row by default).
        envelope = ", ".join(f"avg({c}) AS {c}, min({c}) AS {c}_min, max({c}) AS {c}_max" for c in spec.numeric)
        sql = (
            f"SELECT ts, {k}, {envelope} FROM {spec.name} WHERE ts >= %s AND ts < %s "
            f"SAMPLE BY {_sample_unit(step)} ALIGN TO CALENDAR"
        )
        return self._frame(spec, sql, params, envelope_columns(spec), order=["ts", k])

    def write_alerts(self, alerts: Sequence[Alert]) -> None:
        sql = f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES ({', '.join(['%s'] * len(ALERT_COLUMNS))})"
        for a in alerts:
            self._query(sql, [_naive_utc(a.ts), a.rule, a.sensor, a.topic, a.state, _naive_utc(a.since), _naive_utc(a.seen), a.summary, a.value])

    def alerts(self, start: TimeLike, end: TimeLike | None = None) -> list[Alert]:
        where, params = "ts >= %s", [_naive_utc(start)]
        if end is not None:
            where, params = where + " AND ts < %s", params + [_naive_utc(end)]
        return self._alerts(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE {where} ORDER BY ts, rule, sensor", params)

    def latest_alerts(self, before: TimeLike) -> list[Alert]:
        sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE ts < %s LATEST ON ts PARTITION BY rule, sensor"
        return sorted(self._alerts(sql, [_naive_utc(before)]), key=lambda a: (a.ts, a.rule, a.sensor))

    def _alerts(self, sql: str, params: list) -> list[Alert]:
        found = []
        for row in self._query(sql, params)[1]:
            item = dict(zip(ALERT_COLUMNS, row, strict=True))
            for col in ("ts", "since", "seen"):
                item[col] = to_ms(item[col])  # naive UTC from PG wire
            found.append(Alert(**item))
        return found

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
