"""The rules' state machines: readings, dead letters and the clock in, changes of state out.

No Kafka here: the alerter (pipeline/alerter.py) feeds it batches and publishes what it returns;
the tests drive it directly.

Event time: each (rule, sensor) remembers the newest reading it has evaluated (`seen`). A reading
at or before that one is late, or a repeat (a redelivery, a producer's re-send after a broker
switch): it is counted and skipped, because the state has already moved past its moment. So a
batch read again after a restart changes nothing the `alerts` topic already says.

Threshold rules (Threshold): a reading beyond the threshold makes the alert `pending` (or `firing`
at once when `for_s` is 0); once a reading comes `for_s` after the one that began it, with no
reading back past the threshold by `hysteresis` in between, it is `firing`; a reading back past
it resolves it. Stale rules fire when the clock passes a sensor's newest reading by its limit
(`Stale.limit_ms`) and resolve at its next reading. Dead-letter rules fire on the `count`-th dead
letter within `within_s` and resolve `within_s` after the last one.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.alerts import Alert
from pipeline.rules import DeadLetters, Rule, Stale, Threshold
from pipeline.schema import TOPICS, Batch

NEVER = -(2**62)


@dataclass
class Track:
    """One rule's state for one sensor."""

    state: str = "ok"  # ok, pending or firing
    since: int = 0
    seen: int = NEVER
    recent: deque = field(default_factory=deque)  # dead letters: their times within the window


class Engine:
    def __init__(self, rules: Iterable[Rule], interval_ms: float):
        self.rules = {r.name: r for r in rules}
        self.interval_ms = interval_ms
        self.tracks: dict[str, dict[str, Track]] = {name: {} for name in self.rules}
        self.late = 0  # readings skipped as late or repeated (summed over rules)
        by_topic: dict[str, list[Rule]] = {}
        for r in self.rules.values():
            by_topic.setdefault(r.topic, []).append(r)
        self.by_topic = by_topic

    # -- the changelog --------------------------------------------------------------------------
    def restore(self, alert: Alert) -> None:
        """Take the state a record of the `alerts` topic gives (records are replayed in order)."""
        rule = self.rules.get(alert.rule)
        if rule is None:
            return  # a rule since removed from the file
        if isinstance(rule, Stale) and alert.state == "resolved":
            # A sensor's silence counts from readings seen since the start, never from a record:
            # the clock would find every sensor silent since its last change, long ago.
            self.tracks[alert.rule].pop(alert.sensor, None)
            return
        track = self.tracks[alert.rule].setdefault(alert.sensor, Track())
        track.state = "ok" if alert.state == "resolved" else alert.state
        track.since, track.seen = alert.since, max(track.seen, alert.seen)

    def active(self) -> list[Alert]:
        """The alerts pending or firing now, as records of their current state (a broker's snapshot)."""
        return [
            Alert(rule=name, sensor=sensor, topic=self.rules[name].topic, state=t.state, since=t.since, ts=t.since,
                  seen=t.seen, summary=self.rules[name].describe(), snapshot=True)
            for name, tracks in self.tracks.items() for sensor, t in tracks.items() if t.state != "ok"
        ]

    # -- input ----------------------------------------------------------------------------------
    def readings(self, batch: Batch) -> list[Alert]:
        """Evaluate one topic's valid readings (in message order); the changes they cause."""
        spec = batch.spec
        cols = batch.columns
        if not len(batch):
            return []
        keys = cols[spec.key]
        ts = cols["ts"]
        newest: dict[str, int] | None = None  # per sensor, its last reading in the batch
        out: list[Alert] = []
        for rule in self.by_topic.get(spec.name, ()):
            tracks = self.tracks[rule.name]
            if isinstance(rule, Threshold):
                values = cols[rule.field]
                beyond = values > rule.threshold if rule.kind == "above" else values < rule.threshold
                busy = {k for k, t in tracks.items() if t.state != "ok"}
                if busy or bool(beyond.any()):
                    # Only the sensors with an alert or a reading beyond need the walk, row by row.
                    busy |= {keys[i] for i in np.flatnonzero(beyond).tolist()}
                    out += self._walk(rule, tracks, busy, keys, ts.tolist(), values.tolist())
                newest = newest if newest is not None else dict(zip(keys, ts.tolist()))
                for key, t in newest.items():  # the rest: nothing changes but how far it has been read
                    track = tracks.get(key)
                    if track is None:
                        tracks[key] = Track(seen=t)
                    elif t > track.seen and key not in busy:
                        track.seen = t
            elif isinstance(rule, Stale):
                newest = newest if newest is not None else dict(zip(keys, ts.tolist()))
                for key, t in newest.items():
                    track = tracks.setdefault(key, Track())
                    if t <= track.seen:
                        continue
                    track.seen = t
                    if track.state == "firing":
                        out.append(self._change(rule, key, track, "resolved", t, None, "reporting again"))
        return out

    def _walk(self, rule: Threshold, tracks: dict[str, Track], busy: set[str], keys, ts, values) -> list[Alert]:
        out = []
        above = rule.kind == "above"
        back = rule.threshold - rule.hysteresis if above else rule.threshold + rule.hysteresis
        for key, t, v in zip(keys, ts, values):
            if key not in busy:
                continue
            track = tracks.setdefault(key, Track())
            if t <= track.seen:
                self.late += 1
                continue
            track.seen = t
            if track.state == "ok":
                if v > rule.threshold if above else v < rule.threshold:
                    track.since = t
                    state = "firing" if rule.for_ms == 0 else "pending"
                    out.append(self._change(rule, key, track, state, t, v, f"{v:g}"))
            elif v <= back if above else v >= back:
                out.append(self._change(rule, key, track, "resolved", t, v, f"back to {v:g}"))
            elif track.state == "pending" and t - track.since >= rule.for_ms:
                out.append(self._change(rule, key, track, "firing", t, v, f"{v:g}"))
        return out

    def dead_letters(self, topic: str, times_ms: list[int]) -> list[Alert]:
        """Dead letters that reached `<topic>.dlq` at these times (their Kafka timestamps)."""
        out = []
        for rule in self.by_topic.get(topic, ()):
            if not isinstance(rule, DeadLetters):
                continue
            track = self.tracks[rule.name].setdefault(topic, Track())
            for t in times_ms:
                if t <= track.seen:
                    continue
                track.seen = t
                track.recent.append(t)
                while track.recent and track.recent[0] <= t - rule.within_ms:
                    track.recent.popleft()
                if track.state == "ok" and len(track.recent) >= rule.count:
                    track.since = t
                    out.append(self._change(rule, topic, track, "firing", t, float(len(track.recent)), f"{len(track.recent)} dead letter(s)"))
        return out

    def tick(self, now_ms: int) -> list[Alert]:
        """What the passing of time changes: sensors gone stale, dead-letter alerts gone quiet.

        `now_ms` is the wall clock; the alerter calls this only when it has read all there is
        (a backlog being read would make every sensor look silent)."""
        out = []
        for rule in self.rules.values():
            if isinstance(rule, Stale):
                limit = rule.limit_ms(self.interval_ms)
                for key, track in self.tracks[rule.name].items():
                    if track.state == "ok" and track.seen != NEVER and now_ms - track.seen > limit:
                        track.since = track.seen + limit
                        out.append(self._change(rule, key, track, "firing", track.since, None,
                                                f"silent for {limit / 1000:g} s"))
            elif isinstance(rule, DeadLetters):
                for key, track in self.tracks[rule.name].items():
                    if track.state == "firing" and now_ms - track.seen >= rule.within_ms:
                        track.recent.clear()
                        out.append(self._change(rule, key, track, "resolved", track.seen + rule.within_ms, None, "quiet"))
        return out

    def _change(self, rule: Rule, sensor: str, track: Track, state: str, ts: int, value: float | None, what: str) -> Alert:
        track.state = "ok" if state == "resolved" else state
        return Alert(rule=rule.name, sensor=sensor, topic=rule.topic, state=state, since=track.since, ts=ts,
                     seen=track.seen, summary=f"{rule.describe()}: {sensor} {what}", value=value)


def topic_of(name: str) -> str | None:
    """The reading topic a dead-letter topic belongs to (None if `name` is not one)."""
    base = name.removesuffix(".dlq")
    return base if base != name and base in TOPICS else None
