"""The message contract: topics, their key field and the one validator every reader uses.

A message is one reading as JSON. `ts` is the event time at the source in epoch milliseconds
(UTC). Validation is strict: a float where an int belongs, a string number, NaN or infinity,
an out-of-range value or a key that disagrees with the body is rejected with a reason that
the store writer puts on the dead-letter topic.

Two validators, one contract. `validate()` checks one message with the pydantic models below:
their verdicts and error texts are the contract (the live feed and the tests use it). Store
writers check a whole batch with `validate_batch()`, which decodes every message with msgspec
into a C struct carrying the same constraints (`_ROWS`, gc-free, dropped as soon as the columns
are built), checks the rest (clock, key, memory) on whole columns, and hands back `Batch`
columns. Any message msgspec refuses, and every message of a batch that fails a column check,
gets `validate()`'s verdict and reason instead, so the accepted set and the dead-letter reasons
are pydantic's; tests/test_schema.py runs both over the same good and bad messages.

Why msgspec over pydantic's `TypeAdapter(list[...])` for the batch (5,000 temperature messages,
`python -m bench.ingest --costs`, CPU): msgspec decodes and checks them at 0.43–0.51 µs a message,
to columns, where pydantic took 1.7–2.6 µs as a TypeAdapter over the joined batch (still a model
per reading) and 2.4–2.8 µs one `model_validate_json` at a time: the writer's whole budget at
300,000 rows/s is 3.3 µs a row. msgspec over the joined array (0.30 µs) is not used: a message cut
across the joining comma could pass as two halves of one valid reading.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Literal

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_MESSAGE_BYTES = 4096
# Readings before 2000-01-01 or more than a day ahead of the writer's clock are clock errors.
MIN_TS_MS = 946_684_800_000
FUTURE_SLACK_MS = 86_400_000

SensorName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
EpochMs = Annotated[int, Field(ge=MIN_TS_MS)]


class Reading(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)
    ts: EpochMs


class Temperature(Reading):
    room: SensorName
    value: Annotated[float, Field(ge=-60, le=100)]
    unit: Literal["°C"]


class Humidity(Reading):
    room: SensorName
    value: Annotated[float, Field(ge=0, le=100)]
    unit: Literal["%"]


class SystemUsage(Reading):
    device: SensorName
    cpu_percent: Annotated[float, Field(ge=0, le=100)]
    memory_used: Annotated[int, Field(ge=0)]
    memory_total: Annotated[int, Field(gt=0)]

    @model_validator(mode="after")
    def _used_within_total(self) -> SystemUsage:
        if self.memory_used > self.memory_total:
            raise ValueError(f"memory_used {self.memory_used} exceeds memory_total {self.memory_total}")
        return self


@dataclass(frozen=True)
class Topic:
    name: str
    model: type[Reading]
    key: str  # the field that is also the Kafka message key and the dedup key beside ts
    numeric: tuple[str, ...]  # fields a chart can draw; downsampling averages these
    text: tuple[str, ...] = ()  # other stored fields

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def series_columns(self) -> tuple[str, ...]:
        """What charts draw, and the row layout of live frames: ts, key, then the numeric fields."""
        return ("ts", self.key, *self.numeric)

    @property
    def columns(self) -> tuple[str, ...]:
        """Stored columns in table order: ts, key, the message's fields, then received_at."""
        return ("ts", self.key, *self.numeric, *self.text, "received_at")


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("temperature", Temperature, "room", ("value",), ("unit",)),
        Topic("humidity", Humidity, "room", ("value",), ("unit",)),
        Topic("systemusage", SystemUsage, "device", ("cpu_percent", "memory_used", "memory_total")),
    )
}


def topic(name: str) -> Topic:
    try:
        return TOPICS[name]
    except KeyError:
        raise ValueError(f"unknown topic {name!r}; known topics: {', '.join(TOPICS)}") from None


class InvalidMessage(ValueError):
    """A message that cannot be stored; str() is the reason sent to the dead-letter topic."""


def validate(spec: Topic, value: bytes | None, key: bytes | None, now_ms: int) -> Reading:
    """Parse and check one message, or raise InvalidMessage saying why."""
    if value is None:
        raise InvalidMessage("empty message (no value)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"payload of {len(value)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        reading = spec.model.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc)) from None
    if reading.ts > now_ms + FUTURE_SLACK_MS:
        raise InvalidMessage(f"ts {reading.ts} is more than a day in the future")
    name = getattr(reading, spec.key)
    if key is not None and key.decode("utf-8", "replace") != name:
        raise InvalidMessage(f"message key {key!r} does not match {spec.key} {name!r}")
    return reading


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# ---- the batch path (store writers) -----------------------------------------------------------
# msgspec twins of the models above, field for field in table column order. The name pattern is
# not in the struct: msgspec runs it per message through `re` (0.55 µs of a 0.75 µs decode), so it
# is checked once per distinct name of a batch instead (`fullmatch`: `$` would also match before
# a trailing newline, which pydantic's Rust regex does not). ts is also capped at int64 (pydantic
# refuses such a ts as "in the future" anyway) so it fits its column.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_MsgName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_MsgTs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=2**63 - 1)]


class _Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    ts: _MsgTs


class _TemperatureRow(_Row):
    room: _MsgName
    value: Annotated[float, msgspec.Meta(ge=-60, le=100)]
    unit: Literal["°C"]


class _HumidityRow(_Row):
    room: _MsgName
    value: Annotated[float, msgspec.Meta(ge=0, le=100)]
    unit: Literal["%"]


class _SystemUsageRow(_Row):
    device: _MsgName
    cpu_percent: Annotated[float, msgspec.Meta(ge=0, le=100)]
    memory_used: Annotated[int, msgspec.Meta(ge=0)]
    memory_total: Annotated[int, msgspec.Meta(gt=0)]  # used <= total is checked on the columns


_ROWS: dict[str, type[_Row]] = {"temperature": _TemperatureRow, "humidity": _HumidityRow, "systemusage": _SystemUsageRow}
_DECODERS = {name: msgspec.json.Decoder(row) for name, row in _ROWS.items()}
for _name, _row in _ROWS.items():  # the struct's fields are the stored columns, in order
    assert _row.__struct_fields__ == TOPICS[_name].columns[:-1], _name


class Batch:
    """Valid readings of one topic as columns, in message order: what a writer hands its store.

    `ts` is an int64 array (epoch ms), every numeric field a float64 array, the key and text
    fields lists of str. Built once per batch; the stores read the columns as they are.
    """

    __slots__ = ("columns", "spec")

    def __init__(self, spec: Topic, columns: dict[str, np.ndarray | list[str]]):
        self.spec, self.columns = spec, columns

    def __len__(self) -> int:
        return len(self.columns["ts"])

    @classmethod
    def from_rows(cls, spec: Topic, rows: Sequence) -> Batch:
        """From objects with the topic's fields as attributes (msgspec rows or pydantic readings)."""
        n = len(rows)
        columns: dict[str, np.ndarray | list[str]] = {"ts": np.fromiter(map(attrgetter("ts"), rows), np.int64, n)}
        columns[spec.key] = list(map(attrgetter(spec.key), rows))
        for c in spec.numeric:
            columns[c] = np.fromiter(map(attrgetter(c), rows), np.float64, n)
        for c in spec.text:
            columns[c] = list(map(attrgetter(c), rows))
        return cls(spec, columns)


def as_batch(spec: Topic, readings: Batch | Sequence[Reading]) -> Batch:
    """A Batch as it is, or pydantic readings (tests, tools) turned into one."""
    return readings if isinstance(readings, Batch) else Batch.from_rows(spec, readings)


def validate_batch(
    spec: Topic, values: Sequence[bytes | None], keys: Sequence[bytes | None], now_ms: int
) -> tuple[Batch, list[tuple[int, str]]]:
    """Check a batch of messages at once: the valid ones as columns, and (index, reason) of the rest.

    Accepts and refuses exactly what `validate()` does, message by message, with its reasons.
    """
    try:
        return _fast(spec, values, keys, now_ms), []
    except (msgspec.DecodeError, ValueError, TypeError):  # a message that needs a closer look
        pass
    decode = _DECODERS[spec.name].decode
    rows: list = []
    rejected: list[tuple[int, str]] = []
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        try:
            row = decode(value)
            if not _row_ok(spec, row, key, now_ms):
                raise ValueError("a column check failed")
        except (msgspec.DecodeError, ValueError, TypeError):
            try:
                row = validate(spec, value, key, now_ms)  # the contract's verdict, and its reason
            except InvalidMessage as exc:
                rejected.append((i, str(exc)))
                continue
        rows.append(row)
    return Batch.from_rows(spec, rows), rejected


def _fast(spec: Topic, values: Sequence[bytes | None], keys: Sequence[bytes | None], now_ms: int) -> Batch:
    """The whole batch in C loops, or a ValueError/TypeError/DecodeError if any message needs a look."""
    if values and max(map(len, values)) > MAX_MESSAGE_BYTES:  # len(None) raises TypeError
        raise ValueError("oversized message")
    rows = list(map(_DECODERS[spec.name].decode, values))
    batch = Batch.from_rows(spec, rows)
    _check(spec, batch, keys, now_ms)
    return batch


def _row_ok(spec: Topic, row: _Row, key: bytes | None, now_ms: int) -> bool:
    """_check for one decoded message."""
    name = getattr(row, spec.key)
    if row.ts > now_ms + FUTURE_SLACK_MS or not _NAME.fullmatch(name) or (key is not None and key != name.encode()):
        return False
    return spec.name != "systemusage" or row.memory_used <= row.memory_total


def _check(spec: Topic, batch: Batch, keys: Sequence[bytes | None], now_ms: int) -> None:
    """What the struct types cannot say: the name pattern, ts not too far ahead, key equal to the
    name, used <= total."""
    cols = batch.columns
    if not len(batch):
        return
    if int(cols["ts"].max()) > now_ms + FUTURE_SLACK_MS:
        raise ValueError("ts in the future")
    if not all(map(_NAME.fullmatch, set(cols[spec.key]))):
        raise ValueError("a name off the pattern")
    # Names now match the pattern (no comma, ASCII), so the joined keys equal the joined names
    # exactly when every key equals its name; a None key (no key: nothing to check) raises TypeError.
    if b",".join(keys) != ",".join(cols[spec.key]).encode():
        raise ValueError("key mismatch")
    if spec.name == "systemusage":
        used, total = cols["memory_used"], cols["memory_total"]
        # float64 is exact below 2**53 bytes (8 PiB); anything larger is compared row by row.
        if bool(np.any(used > total)) or float(total.max()) >= 2**53:
            raise ValueError("memory_used > memory_total")
