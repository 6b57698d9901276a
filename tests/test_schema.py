"""The one validator every reader uses: what it accepts and the reasons it gives."""
import json
import math
import time

import pytest

from pipeline.schema import MAX_MESSAGE_BYTES, TOPICS, InvalidMessage, validate

NOW = int(time.time() * 1000)
T, U = TOPICS["temperature"], TOPICS["systemusage"]


def good(**over):
    return {"ts": NOW, "room": "kitchen", "value": 21.5, "unit": "°C", **over}


def check(spec, body, key=b"kitchen"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return validate(spec, raw, key, NOW)


def test_valid_reading_round_trips():
    r = check(T, good())
    assert (r.ts, r.room, r.value, r.unit) == (NOW, "kitchen", 21.5, "°C")


def test_integer_value_is_accepted_for_a_float_field():
    assert check(T, good(value=21)).value == 21.0


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "Invalid JSON"),
        (good(value=math.nan), "finite number"),
        (good(value=math.inf), "finite number"),
        (good(value="21.5"), "valid number"),
        (good(ts=1.5), "valid integer"),
        (good(ts="2026-01-01"), "valid integer"),
        ({k: v for k, v in good().items() if k != "room"}, "room: Field required"),
        (good(unit="F"), "unit"),
        (good(value=500), "less than or equal to 100"),
        (good(room=""), "room"),
        (good(room="bad room!"), "room"),
        (good(extra=1), "extra: Extra inputs are not permitted"),
        (good(ts=NOW + 2 * 86_400_000), "in the future"),
        (good(ts=1000), "greater than or equal"),
        (b"[1, 2]", "should be an object"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(body, reason):
    with pytest.raises(InvalidMessage) as exc:
        check(T, body)
    assert reason in str(exc.value)


def test_oversized_payload_is_rejected_before_parsing():
    with pytest.raises(InvalidMessage, match="exceeds"):
        check(T, b"{" + b" " * MAX_MESSAGE_BYTES + b"}")


def test_empty_value_is_rejected():
    with pytest.raises(InvalidMessage, match="empty"):
        validate(T, None, b"kitchen", NOW)


def test_key_must_match_the_room():
    with pytest.raises(InvalidMessage, match="does not match"):
        check(T, good(), key=b"office")


def test_systemusage_memory_used_cannot_exceed_total():
    body = {"ts": NOW, "device": "d1", "cpu_percent": 5.0, "memory_used": 10, "memory_total": 5}
    with pytest.raises(InvalidMessage, match="exceeds memory_total"):
        check(U, body, key=b"d1")
    body["memory_used"] = 4
    assert check(U, body, key=b"d1").memory_used == 4
