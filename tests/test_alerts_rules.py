"""Alert rules: their semantics on event time (pipeline/evaluate.py) and a bad rule file refused."""
import subprocess
import sys

import pytest

from pipeline import rules
from pipeline.alerts import Alert, decode, encode
from pipeline.evaluate import Engine
from pipeline.rules import DeadLetters, Stale, Threshold
from pipeline.schema import TOPICS, Temperature, as_batch
from tests.helpers import ROOT

T0 = 1_800_000_000_000
TEMP = TOPICS["temperature"]
HIGH = Threshold(name="hot", topic="temperature", kind="above", field="value", threshold=26, for_s=60, hysteresis=0.5)


def feed(engine: Engine, *readings: tuple[int, float], room: str = "kitchen") -> list[tuple[str, int]]:
    """(state, ts) of the changes a batch of (seconds after T0, value) readings causes."""
    batch = as_batch(TEMP, [Temperature(ts=T0 + round(s * 1000), room=room, value=v, unit="°C") for s, v in readings])
    return [(a.state, (a.ts - T0) / 1000) for a in engine.readings(batch)]


def test_threshold_fires_only_after_its_duration_and_resolves_once_back():
    engine = Engine([HIGH], 1000)
    assert feed(engine, (0, 25.0), (1, 26.5)) == [("pending", 1)]
    assert feed(engine, *((s, 27.0) for s in range(2, 61))) == [], "not yet 60 s beyond"
    assert feed(engine, (61, 26.2)) == [("firing", 61)]
    assert feed(engine, (62, 25.0)) == [("resolved", 62)]
    assert feed(engine, (63, 25.0)) == []


def test_hysteresis_keeps_a_value_hovering_at_the_line_from_flapping():
    engine = Engine([HIGH.model_copy(update={"for_s": 0})], 1000)
    hover = [(s, 26.1 if s % 2 else 25.9) for s in range(120)]
    assert feed(engine, *hover) == [("firing", 1)], "once, however often it crosses 26"
    assert feed(engine, (120, 25.5)) == [("resolved", 120)], "back by the hysteresis (0.5)"


def test_pending_that_ends_before_its_duration_is_resolved_without_firing():
    engine = Engine([HIGH], 1000)
    assert feed(engine, (0, 27), (30, 27), (31, 25.4), (100, 25)) == [("pending", 0), ("resolved", 31)]


def test_below_rules_and_sensors_are_separate():
    low = Threshold(name="cold", topic="temperature", kind="below", field="value", threshold=18, for_s=0, hysteresis=0.5)
    engine = Engine([HIGH, low], 1000)
    assert feed(engine, (0, 17.9), room="office") == [("firing", 0)]
    assert feed(engine, (0, 21), room="kitchen") == []
    assert feed(engine, (1, 18.2), room="office") == [], "not back by the hysteresis yet"
    assert feed(engine, (2, 18.5), room="office") == [("resolved", 2)]


def test_late_and_repeated_readings_change_nothing():
    engine = Engine([HIGH], 1000)
    assert feed(engine, (10, 27), (9, 20), (70, 27)) == [("pending", 10), ("firing", 70)], "the late 20 at 9 s does not clear it"
    assert feed(engine, (50, 20), (70, 27), (10, 27)) == [], "late, and repeats (a redelivery), are skipped"
    assert engine.late == 4
    assert feed(engine, (71, 20)) == [("resolved", 71)]


def test_out_of_order_within_a_batch_is_evaluated_in_event_time_per_sensor():
    engine = Engine([HIGH.model_copy(update={"for_s": 0})], 1000)
    # Two rooms interleaved; each room's readings in its own order.
    batch = as_batch(TEMP, [Temperature(ts=T0 + s * 1000, room=r, value=v, unit="°C")
                            for s, r, v in [(1, "a", 27), (1, "b", 20), (2, "b", 27), (0, "a", 20), (3, "a", 25)]])
    assert [(a.sensor, a.state, a.ts - T0) for a in engine.readings(batch)] == [("a", "firing", 1000), ("b", "firing", 2000), ("a", "resolved", 3000)]


def test_a_stale_sensor_fires_at_its_limit_and_resolves_when_it_reports():
    stale = Stale(name="quiet", topic="temperature", kind="stale", intervals=5, min_s=2)
    engine = Engine([stale], 1000)  # one reading a second: 5 s
    feed(engine, (0, 20), (1, 20))
    assert engine.tick(T0 + 6000) == []
    fired = engine.tick(T0 + 6001)
    assert [(a.state, a.ts - T0) for a in fired] == [("firing", 6000)]
    assert engine.tick(T0 + 60_000) == [], "fires once"
    assert feed(engine, (61, 20)) == [("resolved", 61)]


def test_dead_letters_fire_on_the_count_within_the_window_and_resolve_when_quiet():
    rule = DeadLetters(name="bad", topic="temperature", kind="dead_letters", count=2, within_s=10)
    engine = Engine([rule], 1000)
    assert engine.dead_letters("temperature", [T0]) == []
    assert engine.dead_letters("temperature", [T0 + 11_000]) == [], "the first has left the window"
    [fired] = engine.dead_letters("temperature", [T0 + 12_000])
    assert (fired.state, fired.sensor, fired.ts) == ("firing", "temperature", T0 + 12_000)
    assert engine.dead_letters("temperature", [T0 + 13_000]) == [] and engine.tick(T0 + 22_000) == []
    [resolved] = engine.tick(T0 + 23_000)
    assert (resolved.state, resolved.ts) == ("resolved", T0 + 23_000)


def test_state_rebuilt_from_the_changelog_repeats_nothing_and_goes_on_as_before():
    """A restart replays `alerts` and re-reads readings not yet committed: nothing is published twice."""
    readings = [(s, 27.0) for s in range(90)] + [(90, 25)] + [(s, 27.0) for s in range(91, 200)]
    whole = Engine([HIGH], 1000)
    everything = whole.readings(as_batch(TEMP, [Temperature(ts=T0 + s * 1000, room="kitchen", value=v, unit="°C") for s, v in readings]))
    for cut in (30, 61, 95, 152):  # crash after the changes of the first `cut` readings were acknowledged
        first = Engine([HIGH], 1000)
        published = first.readings(as_batch(TEMP, [Temperature(ts=T0 + s * 1000, room="kitchen", value=v, unit="°C") for s, v in readings[:cut]]))
        restarted = Engine([HIGH], 1000)
        for record in published:
            restarted.restore(decode(encode(record)))
        committed = max(0, cut - 20)  # offsets lag the acknowledged changes
        again = restarted.readings(as_batch(TEMP, [Temperature(ts=T0 + s * 1000, room="kitchen", value=v, unit="°C") for s, v in readings[committed:]]))
        assert published + again == everything, f"cut at {cut}"


def test_snapshot_of_active_alerts_restores_the_same_state():
    engine = Engine([HIGH], 1000)
    feed(engine, (0, 27), (60, 27))
    [snapshot] = engine.active()
    assert snapshot.snapshot and snapshot.state == "firing" and snapshot.since == T0
    other = Engine([HIGH], 1000)
    other.restore(snapshot)
    assert feed(other, (61, 27)) == [] and feed(other, (62, 20)) == [("resolved", 62)]


def test_defaults_come_from_the_chart_bands():
    by_name = {r.name: r for r in rules.defaults()}
    assert (by_name["temperature-high"].kind, by_name["temperature-high"].threshold, by_name["temperature-high"].for_s) == ("above", 26, 60)
    assert (by_name["temperature-low"].kind, by_name["temperature-low"].threshold) == ("below", 18)
    assert (by_name["humidity-high"].threshold, by_name["humidity-low"].threshold, by_name["cpu-high"].threshold) == (60, 30, 90)
    assert {"temperature-stale", "humidity-dead-letters", "systemusage-stale"} <= set(by_name)


@pytest.mark.parametrize(("text", "message"), [
    ('kind = "above"\ntopic = "temperature"\nfield = "value"\nthreshold = 26\nfor_s = -5',
     "rule 'r': for_s=-5 refused; expected a number of seconds ≥ 0"),
    ('kind = "above"\ntopic = "temperature"\nfield = "cpu_percent"\nthreshold = 26',
     "rule 'r': field 'cpu_percent' is not a numeric field of temperature; expected a numeric field of the topic"),
    ('kind = "over"\ntopic = "temperature"', "rule 'r': kind='over' refused; expected above, below, stale or dead_letters"),
    ('kind = "stale"\ntopic = "temperature"\nwithin_s = 3', "rule 'r': unknown field 'within_s' for its kind"),
])
def test_a_bad_rule_stops_run_all_with_one_line(tmp_path, text, message):
    path = tmp_path / "rules.toml"
    path.write_text(f'[[rules]]\nname = "r"\n{text}\n')
    env = {"ALERT_RULES": str(path), "RUN_DIR": str(tmp_path / "run"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "all", "--no-dashboard"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: ALERT_RULES='{path}' refused: {message}"), done.stderr
    assert not (tmp_path / "run").exists(), "nothing started"


def test_alert_records_round_trip():
    alert = Alert(rule="hot", sensor="kitchen", topic="temperature", state="firing", since=T0, ts=T0 + 1, seen=T0 + 1, value=27.5)
    assert decode(encode(alert)) == alert and alert.key == b"hot|kitchen"
