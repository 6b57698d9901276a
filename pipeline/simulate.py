"""Plausible dummy readings: a daily cycle, a slow mean-reverting drift and a little noise, all
in time: a faster rate samples the same signals more finely.

Each sensor's character (baseline, amplitude, phase) comes from a generator seeded by its
name, so a room keeps its personality across restarts. One systemusage device reports this
machine's real CPU and memory (psutil); the others are simulated.
"""
from __future__ import annotations

import math
import random
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import psutil

DAY_S = 86_400.0
# Now and then a room overheats (a radiator left on, the sun through a window): on average once
# every HEAT_EVERY_S per room, for HEAT_S seconds, peaking at HEAT_PEAK_C. With the default four
# rooms a new user sees the default `temperature-high` alert fire and resolve within minutes.
HEAT_EVERY_S = 1800.0
HEAT_S = (150.0, 240.0)
HEAT_PEAK_C = 28.0
# A server's load bursts (a batch job, a backup) on average once every BURST_EVERY_S, for BURST_S
# seconds, by BURST_CPU percent: in time, not per reading, so that a faster rate samples the same
# bursts more finely instead of drawing a hundred one-reading spikes a second.
BURST_EVERY_S = 100.0
BURST_S = (3.0, 20.0)
BURST_CPU = (20.0, 50.0)
ROOM_NAMES = ("kitchen", "living-room", "bedroom", "office", "bathroom", "hallway", "garage", "attic")
GiB = 1024**3


def room_names(n: int) -> list[str]:
    return [ROOM_NAMES[i] if i < len(ROOM_NAMES) else f"room-{i + 1}" for i in range(n)]


def device_names(n: int) -> list[str]:
    """This machine first (real figures), then simulated servers."""
    return [socket.gethostname().split(".")[0] or "localhost"][: min(n, 1)] + [f"server-{i}" for i in range(1, n)]


def _rng(name: str) -> random.Random:
    return random.Random(zlib.crc32(name.encode()))


@dataclass
class Drift:
    """Ornstein-Uhlenbeck process: wanders like weather but always returns towards zero."""

    sigma: float  # typical size of the wander
    tau_s: float  # how long a deviation lasts
    x: float = 0.0

    def step(self, dt: float, rng: random.Random) -> float:
        dt = max(dt, 1e-3)
        decay = math.exp(-dt / self.tau_s)
        self.x = self.x * decay + self.sigma * math.sqrt(1 - decay * decay) * rng.gauss(0, 1)
        return self.x


@dataclass
class Episode:
    """Something that happens now and then, in time: on average once every `every_s` seconds,
    for a duration drawn from `duration_s` (an overheating room, a server's load burst)."""

    every_s: float
    duration_s: tuple[float, float]
    current: tuple[float, float, float] | None = None  # (start, duration, size) of the one under way

    def at(self, t: float, dt: float, rng: random.Random, size: Callable[[], float]) -> tuple[float, float, float] | None:
        """The episode under way at `t`, as (start, duration, size); `size` is called when one begins."""
        if self.current is None and rng.random() < min(1.0, dt / self.every_s):
            self.current = (t, rng.uniform(*self.duration_s), size())
        if self.current is not None and t - self.current[0] >= self.current[1]:
            self.current = None
        return self.current


class RoomClimate:
    """Temperature (°C) and relative humidity (%) of one room."""

    def __init__(self, name: str):
        r = _rng(name)
        self.rng = r
        self.temp_base = r.uniform(19.0, 23.0)
        self.temp_amp = r.uniform(1.0, 3.0)
        self.hum_base = r.uniform(38.0, 55.0)
        self.hum_amp = r.uniform(4.0, 10.0)
        self.phase_s = r.uniform(-7200, 7200)  # warmest mid-afternoon, give or take two hours
        self.temp_drift = Drift(sigma=0.6, tau_s=1800)
        self.hum_drift = Drift(sigma=3.0, tau_s=2400)
        # Noise with a time scale, not a draw per reading: a rule near its threshold would
        # otherwise flap as often as the rate allows.
        self.temp_jitter = Drift(sigma=0.05, tau_s=2.0)
        self.hum_jitter = Drift(sigma=0.3, tau_s=2.0)
        self.last_t: float | None = None
        self.heat = Episode(HEAT_EVERY_S, HEAT_S)  # its size: the amplitude up to HEAT_PEAK_C

    def _heat(self, t: float, dt: float, temp: float) -> float:
        """The overheating's share of the temperature at `t`: a half sine up to HEAT_PEAK_C."""
        heat = self.heat.at(t, dt, self.rng, lambda: max(2.0, HEAT_PEAK_C - temp))
        if heat is None:
            return 0.0
        start, duration, amplitude = heat
        return amplitude * math.sin(math.pi * (t - start) / duration)

    def _cycle(self, t: float) -> float:
        # +1 at 15:00 UTC (plus this room's phase), -1 twelve hours later.
        return math.cos(2 * math.pi * (t - 15 * 3600 - self.phase_s) / DAY_S)

    def read(self, t: float) -> tuple[float, float]:
        dt = 1.0 if self.last_t is None else t - self.last_t
        self.last_t = t
        cycle = self._cycle(t)
        temp = self.temp_base + self.temp_amp * cycle + self.temp_drift.step(dt, self.rng) + self.temp_jitter.step(dt, self.rng)
        temp += self._heat(t, dt, temp)
        # Warm air holds more water: relative humidity dips when the room warms.
        hum = self.hum_base - self.hum_amp * cycle + self.hum_drift.step(dt, self.rng) + self.hum_jitter.step(dt, self.rng)
        return round(temp, 2), round(min(100.0, max(0.0, hum)), 1)


class SimulatedMachine:
    """CPU % and memory of a simulated server: a daily load curve, drift and short bursts."""

    def __init__(self, name: str):
        r = _rng(name)
        self.rng = r
        self.memory_total = r.choice((8, 16, 32, 64)) * GiB
        self.cpu_base = r.uniform(10, 35)
        self.mem_base = r.uniform(0.35, 0.6)
        self.cpu_drift = Drift(sigma=8.0, tau_s=120)
        self.mem_drift = Drift(sigma=0.05, tau_s=900)
        self.cpu_jitter = Drift(sigma=2.0, tau_s=2.0)  # as a room's jitter
        self.last_t: float | None = None
        self.burst = Episode(BURST_EVERY_S, BURST_S)  # its size: the extra CPU %

    def read(self, t: float) -> tuple[float, int, int]:
        dt = 1.0 if self.last_t is None else t - self.last_t
        self.last_t = t
        busy = 0.5 + 0.5 * math.cos(2 * math.pi * (t - 14 * 3600) / DAY_S)  # busiest in the afternoon
        burst = self.burst.at(t, dt, self.rng, lambda: self.rng.uniform(*BURST_CPU))
        cpu_burst = 0.0 if burst is None else burst[2]
        cpu = self.cpu_base * (0.5 + busy) + self.cpu_drift.step(dt, self.rng) + cpu_burst + self.cpu_jitter.step(dt, self.rng)
        share = self.mem_base + 0.1 * busy + self.mem_drift.step(dt, self.rng)
        used = int(min(0.97, max(0.05, share)) * self.memory_total)
        return round(min(100.0, max(0.0, cpu)), 1), used, self.memory_total


class ThisMachine:
    """This machine's real CPU % and memory, each sample taken over at least SAMPLE_S of the
    readings' time and repeated by the readings in between. Sampled at every reading, a 5 ms
    window at --rate 200 saw the CPU either busy or idle (0 or 100 %), and the cpu-high rule
    flapped pending/resolved hundreds of times a minute."""

    SAMPLE_S = 1.0

    def __init__(self):
        psutil.cpu_percent(None)  # the first call only starts the measurement
        self.sampled_at: float | None = None
        self.sample = (0.0, 0, 0)

    def read(self, t: float) -> tuple[float, int, int]:
        if self.sampled_at is None or t - self.sampled_at >= self.SAMPLE_S or t < self.sampled_at:
            mem = psutil.virtual_memory()
            self.sample = (float(psutil.cpu_percent(None)), int(mem.total - mem.available), int(mem.total))
            self.sampled_at = t
        return self.sample
