"""The `alerts` topic's records: one per change of an alert's state, keyed by rule and sensor.

An alert's life is an episode named by (rule, sensor, since): `pending` when its condition starts
(threshold rules with a duration), `firing`, then `resolved` (also straight from `pending` when
the condition ends before the duration: it never fired). `ts` is the event time of the change (the
reading that caused it; for a stale sensor the moment it became stale; for dead letters the time
of the one that fired it, or when the window passed without another).

The topic is also the alerter's changelog (as a Kafka Streams state store's): replaying it rebuilds
the alerter's state, so `seen` carries the event time up to which the rule had evaluated that
sensor when the record was made. A record with `snapshot` true repeats the state an alert already
had, on a newly renewed embedded broker (it holds nothing of the old one): not a change.
"""
from __future__ import annotations

import msgspec

ALERTS_TOPIC = "alerts"
WEBHOOK_DLQ = f"{ALERTS_TOPIC}.dlq"  # alert changes the webhook failed to deliver, with the reason
STATES = ("pending", "firing", "resolved")


class Alert(msgspec.Struct, frozen=True, omit_defaults=True):
    rule: str
    sensor: str  # room or device; the topic for dead letters
    topic: str
    state: str  # one of STATES
    since: int  # event time (epoch ms) the episode began
    ts: int  # event time (epoch ms) of this change
    seen: int  # event time up to which the rule had evaluated the sensor
    summary: str = ""
    value: float | None = None
    snapshot: bool = False

    @property
    def key(self) -> bytes:
        return f"{self.rule}|{self.sensor}".encode()

    @property
    def episode(self) -> tuple[str, str, int]:
        return self.rule, self.sensor, self.since


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Alert).decode


def encode(alert: Alert) -> bytes:
    return _encode(alert)


def decode(value: bytes) -> Alert:
    """An alert record; msgspec.ValidationError/DecodeError if it is not one."""
    return _decode(value)
