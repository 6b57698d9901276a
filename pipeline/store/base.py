"""The store interface: what the writers put in and the reads the dashboard needs.

Both backends return the same pandas shapes: a `ts` column of UTC-aware datetimes, the topic's
key column (room or device), then its fields. Times given to the reads may be epoch
milliseconds, aware datetimes in any zone, or naive datetimes, which are taken as UTC.

A downsampled range (see `Store.range`) also carries each numeric field's envelope, `<field>_min`
and `<field>_max` per bucket, computed in the database beside the mean: a lone spike survives in
its bucket's max however long the range.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

from pipeline.alerts import Alert
from pipeline.schema import Batch, Reading, Topic

if TYPE_CHECKING:  # imported where a frame is made: store writers never read, and pandas is large
    import pandas as pd

TimeLike = int | float | datetime  # pandas Timestamps are datetimes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or refused the operation; the caller may retry."""


def to_ms(t: TimeLike) -> int:
    """Epoch milliseconds of an int/float (already ms), an aware datetime, or a naive UTC datetime."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return int(t)
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return (t - _EPOCH) // _ONE_MS  # integer arithmetic: timestamp() * 1000 can be 1 ms short
    raise TypeError(f"expected epoch milliseconds or a datetime, got {type(t).__name__}")


def bucket_ms(start_ms: int, end_ms: int, max_points: int) -> int:
    """Bucket width that puts at most `max_points` buckets on [start, end) however it is aligned."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    return max(1, math.ceil((end_ms - start_ms) / (max_points - 1)))


TEN_SECONDS_MS = 10_000
MINUTE_MS = 60_000


def range_bucket_ms(start_ms: int, end_ms: int, max_points: int) -> int:
    """Width of the buckets `Store.range` cuts [start, end) into, the same on every store:
    `bucket_ms`, rounded up to whole 10 seconds from 10 s on and to whole minutes from 5 minutes
    on (SQLite reads such buckets whole from its rollups). Buckets start at multiples of the
    width since the epoch (UTC)."""
    step = bucket_ms(start_ms, end_ms, max_points)
    if step < TEN_SECONDS_MS:
        return step
    # Whole minutes once that costs less than a fifth of the points (a week's chart then reads
    # one minute row where the 10-second rollup has six), else whole 10 seconds.
    width = MINUTE_MS if step >= 5 * MINUTE_MS else TEN_SECONDS_MS
    return math.ceil(step / width) * width


def envelope_columns(spec: Topic) -> tuple[str, ...]:
    """Columns of a downsampled range: ts, key, then each numeric field's mean, min and max."""
    return ("ts", spec.key, *(f"{c}{end}" for c in spec.numeric for end in ("", "_min", "_max")))


def empty_frame(spec: Topic, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    for col in ("ts", "received_at"):
        frame[col] = pd.Series(dtype="datetime64[ms, UTC]")
    frame[spec.key] = pd.Series(dtype="object")
    return frame[list(columns)]  # received_at is dropped again where columns lack it


class Store(ABC):
    """One database holding a table per topic; writes are idempotent on (ts, key)."""

    @abstractmethod
    def ensure_tables(self) -> None:
        """Create the tables that do not exist yet."""

    @abstractmethod
    def write(self, spec: Topic, readings: Batch | Sequence[Reading], received_at_ms: int) -> None:
        """Store readings durably before returning; a (ts, key) already stored is overwritten.

        Writers hand over a `Batch` (columns, from `schema.validate_batch`); a sequence of
        pydantic readings is turned into one (`schema.as_batch`). Within a batch the last
        reading of a (ts, key) wins.
        """

    @abstractmethod
    def latest(self, spec: Topic) -> pd.DataFrame:
        """The newest row of each room/device, all stored columns."""

    @abstractmethod
    def since(self, spec: Topic, start: TimeLike, end: TimeLike | None = None) -> pd.DataFrame:
        """Raw rows with start <= ts (< end), ordered by ts, all stored columns."""

    @abstractmethod
    def range(self, spec: Topic, start: TimeLike, end: TimeLike, max_points: int) -> pd.DataFrame:
        """Rows with start <= ts < end, at most `max_points` per room/device.

        Raw rows when every series fits: columns ts, key, numeric fields (no envelope: a reading
        is its own min and max). Otherwise the database cuts the range into equal time buckets
        (the row's ts is the bucket start; a bucket without readings has no row) and returns, per
        bucket and room/device, each numeric field's mean as `<field>` and its lowest and highest
        reading as `<field>_min` and `<field>_max` (`envelope_columns`). An empty range has the
        raw columns.
        """

    # A store writer writes in a process of its own (pipeline.write_behind). What can be done
    # without the store is done in the writer, beside the write in flight: `prepare` there, then
    # `write_prepared` in the write process, which is `write` of what `prepare` made.
    @staticmethod
    def prepare(spec: Topic, batch: Batch, received_at_ms: int) -> Any:
        """What the write process is handed for a batch (picklable): here its columns."""
        return batch.columns

    def write_prepared(self, spec: Topic, prepared: Any, received_at_ms: int) -> None:
        """`write` of a batch `prepare` made into `prepared`."""
        self.write(spec, Batch(spec, prepared), received_at_ms)

    @abstractmethod
    def write_alerts(self, alerts: Sequence[Alert]) -> None:
        """Store changes of alert state (the `alerts` topic's records, snapshots left out by the
        caller); one row per (rule, sensor, since, state): a change stored again overwrites itself."""

    @abstractmethod
    def alerts(self, start: TimeLike, end: TimeLike | None = None) -> list[Alert]:
        """The changes of alert state with start <= ts (< end), oldest first."""

    @abstractmethod
    def latest_alerts(self, before: TimeLike) -> list[Alert]:
        """The newest change before `before` of each (rule, sensor): what every alert was in at
        that time (an alert firing since before a window the panel loads is still firing)."""

    @abstractmethod
    def count(self, spec: Topic) -> int:
        """Number of stored rows (tests and benchmarks)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the database cannot answer."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
