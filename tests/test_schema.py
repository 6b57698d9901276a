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


# ---- the writers' batch validator agrees with validate(), message by message -----------------

EDGE_CASES = [
    good(), good(value=21), good(value=-60), good(value=100), good(value=100.000000000000001), good(room="a" * 64),
    good(room="a" * 65), good(room="kitchen\n"), good(room="k,x"), good(ts=NOW + 86_400_000), good(ts=10**22),
    good(value=True), good(value=None), good(unit="°C\x00"), b'{"ts":%d,"room":"kitchen","value":1,"unit":"\\u00b0C"}' % NOW,
    b' {"ts":%d,"room":"kitchen","value":1,"unit":"\xc2\xb0C"}\n' % NOW, b'{"ts":%d,"room":"kitchen","value":1,"unit":"\xc2\xb0C"},' % NOW,
    b'{"ts":%d,"room":"kitchen","value":1,"unit":"\xc2\xb0C","ts":%d}' % (NOW, NOW + 1), b'{"ts":%d,"room":"\xff","value":1,"unit":"\xc2\xb0C"}' % NOW,
    b'{"ts":%d,"room":"kitchen","value":NaN,"unit":"\xc2\xb0C"}' % NOW, b"[1, 2]", b"{oops", b"{" + b" " * MAX_MESSAGE_BYTES + b"}", None,
]


def _verdict(spec, value, key):
    try:
        return ("ok", validate(spec, value, key, NOW).model_dump())
    except InvalidMessage as exc:
        return ("rejected", str(exc))


@pytest.mark.parametrize("keys", ["matching", "none", "mismatch"])
def test_validate_batch_accepts_and_refuses_what_validate_does_with_its_reasons(keys):
    from pipeline.schema import validate_batch

    values = [b if isinstance(b, bytes) or b is None else json.dumps(b).encode() for b in EDGE_CASES] * 2
    key = {"matching": b"kitchen", "none": None, "mismatch": b"office"}[keys]
    batch, rejected = validate_batch(T, values, [key] * len(values), NOW)
    expected = [_verdict(T, v, key) for v in values]
    assert dict(rejected) == {i: why for i, (kind, why) in enumerate(expected) if kind == "rejected"}
    accepted = [r for kind, r in expected if kind == "ok"]
    cols = batch.columns
    assert len(batch) == len(accepted)
    assert [(int(t), r, float(v), u) for t, r, v, u in zip(cols["ts"], cols["room"], cols["value"], cols["unit"])] == [
        (a["ts"], a["room"], a["value"], a["unit"]) for a in accepted
    ]


def test_validate_batch_all_valid_and_systemusage_cross_field():
    from pipeline.schema import validate_batch

    ok = [json.dumps(good(ts=NOW - i, room=f"r{i % 3}")).encode() for i in range(100)]
    batch, rejected = validate_batch(T, ok, [f"r{i % 3}".encode() for i in range(100)], NOW)
    assert rejected == [] and len(batch) == 100 and batch.columns["ts"].dtype == "int64"
    body = {"ts": NOW, "device": "d1", "cpu_percent": 5.0, "memory_used": 10, "memory_total": 5}
    fine = {**body, "memory_used": 4}
    huge = {**body, "memory_used": 2**60 + 1, "memory_total": 2**60}  # equal as float64, not as int
    values = [json.dumps(b).encode() for b in (fine, body, huge, fine)]
    batch, rejected = validate_batch(U, values, [b"d1"] * 4, NOW)
    assert [i for i, _ in rejected] == [1, 2] and all("exceeds memory_total" in why for _, why in rejected)
    assert batch.columns["memory_used"].tolist() == [4.0, 4.0]
