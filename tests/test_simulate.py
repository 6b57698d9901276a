"""Dummy data that looks like sensors: a daily cycle, smooth drift, small noise, sane ranges."""
import itertools
import statistics

from pipeline.producer import first_tick_ms
from pipeline.schema import TOPICS
from pipeline.simulate import RoomClimate, SimulatedMachine, ThisMachine, room_names


def test_room_climate_is_smooth_and_follows_a_daily_cycle():
    room = RoomClimate("kitchen")
    day = [room.read(t) for t in range(0, 86_400, 10)]
    temps = [t for t, _ in day]
    steps = [abs(b - a) for a, b in itertools.pairwise(temps)]
    assert statistics.median(steps) < 0.2, "successive readings should differ a little, not jump"
    assert 1.0 < max(temps) - min(temps) < 12, "a day should swing by a few degrees"
    assert all(10 < t < 35 for t in temps) and all(0 <= h <= 100 for _, h in day)
    afternoon = statistics.mean(temps[13 * 360:17 * 360])
    night = statistics.mean(temps[1 * 360:5 * 360])
    assert afternoon > night


def test_each_room_has_its_own_character_that_survives_a_restart():
    a, b = RoomClimate("kitchen"), RoomClimate("office")
    assert a.temp_base != b.temp_base
    assert RoomClimate("kitchen").temp_base == a.temp_base


def test_simulated_machine_stays_in_range():
    m = SimulatedMachine("server-1")
    for t in range(0, 86_400, 30):
        cpu, used, total = m.read(t)
        assert 0 <= cpu <= 100 and 0 < used <= total


def test_a_faster_rate_samples_the_same_load_not_more_spikes():
    """Bursts and noise are in time, not drawn per reading: at 1000 readings/s a server's CPU
    crosses 90 % (the cpu-high rule's threshold) about as often a minute as a person would
    expect of a machine, not on every burst-sized coin toss (34 times a minute per server when
    each reading drew its own burst and noise)."""
    afternoon = 1_796_047_200.0  # 14:00 UTC: the busiest hour
    for name in ("server-1", "server-2", "server-3"):
        for rate, minutes in ((1, 60), (1000, 3)):
            m, above, crossings = SimulatedMachine(name), False, 0
            for i in range(int(minutes * 60 * rate)):
                now_above = m.read(afternoon + i / rate)[0] > 90
                crossings += now_above and not above
                above = now_above
            assert crossings / minutes < 3, (name, rate, crossings)


def test_this_machine_samples_its_cpu_over_a_second_not_per_reading():
    """At 200 readings/s a reading's own 5 ms window sees the CPU busy or idle: the series
    would flip between 0 and 100. Readings within a second repeat one sample over that second."""
    m = ThisMachine()
    t0 = 1_795_600_000.0
    readings = [m.read(t0 + i * 0.005) for i in range(400)]  # 2 s at 200 readings/s
    assert readings[0] == readings[190] and readings[210] == readings[399]  # one sample per second
    assert all(0 <= cpu <= 100 and 0 < used <= total for cpu, used, total in readings)


def test_room_names_extend_past_the_named_rooms():
    names = room_names(10)
    assert len(set(names)) == 10 and names[0] == "kitchen" and names[-1] == "room-10"


def test_topics_sample_at_their_own_phase_of_the_period():
    """Producers started together still tick apart: each topic at its own third of the period."""
    for period_ms in (1000.0, 1000 / 3, 10.0):
        for now_ms in (1_795_600_000_123.4, 1_795_600_000_999.9):
            starts = {name: first_tick_ms(spec, period_ms, now_ms) for name, spec in TOPICS.items()}
            assert all(now_ms <= t < now_ms + period_ms + 1 for t in starts.values()), starts
            phases = sorted(round(t % period_ms / period_ms * len(TOPICS)) % len(TOPICS) for t in starts.values())
            assert phases == list(range(len(TOPICS))), (period_ms, starts)
