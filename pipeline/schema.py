"""The message contract: topics, their key field and the one validator every reader uses.

A message is one reading as JSON. `ts` is the event time at the source in epoch milliseconds
(UTC). Validation is strict: a float where an int belongs, a string number, NaN or infinity,
an out-of-range value or a key that disagrees with the body is rejected with a reason that
the store writer puts on the dead-letter topic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

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
