"""History for the charts: a downsampled range from the store, joined to the live ring.

The store lags Kafka by a writer batch, so the newest points may exist only in the ring. The
snapshot takes the ring's cursor first, then per series appends ring points newer than the
store's last row: the page gets every point up to the cursor once, and the stream continues
from that cursor. Right after the dashboard starts, the ring begins later than the store
ends (the live consumer starts from the latest offset); the snapshot then waits briefly for the
writers to close that gap rather than leave a hole.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd

from dash_app.live import Health, Ring
from pipeline.schema import TOPICS, Topic
from pipeline.store import Store, StoreUnavailable

log = logging.getLogger("dash_app.history")
CATCH_UP_S = 3.0  # longest a live page load waits for the writers to reach the ring's first points


@dataclass
class Snapshot:
    frames: dict[str, pd.DataFrame]  # topic -> ts (epoch ms), key, numeric fields (and their _min, _max when downsampled)
    cursor: str
    ring_frames: dict[str, pd.DataFrame]  # every row in the ring, raw (for the cards)
    error: str | None = None


def _ms(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["ts"] = frame["ts"].astype("datetime64[ms, UTC]").astype("int64")
    return frame


def topic_range(store: Store, spec: Topic, start_ms: int, end_ms: int, max_points: int) -> pd.DataFrame:
    return _ms(store.range(spec, start_ms, end_ms, max_points))


def snapshot(
    store: Store, ring: Ring, health: Health, start_ms: int, end_ms: int, max_points: int, with_ring: bool, live_bucket_ms: int = 0,
) -> Snapshot:
    """History of every topic for [start, end); `with_ring` adds the ring's newer points;
    `live_bucket_ms` > 0 cuts raw rows into the live stream's buckets (live_buckets)."""
    ring_rows, head = ring.snapshot()
    ring_frames = {
        spec.name: pd.DataFrame(ring_rows.get(spec.name, []), columns=list(spec.series_columns))
        for spec in TOPICS.values()
    }
    if with_ring:
        _await_store(store, ring_frames)
    frames, error = {}, None
    for spec in TOPICS.values():
        live = ring_frames[spec.name]
        try:
            stored = topic_range(store, spec, start_ms, end_ms, max_points)
            health.store_ok = True
        except StoreUnavailable as exc:
            log.warning("history unavailable: %s", exc)
            health.store_ok, error = False, str(exc)
            stored = pd.DataFrame(columns=list(spec.series_columns))
        if not with_ring:
            live = live.iloc[0:0]
        if not live.empty:
            live = live[(live["ts"] >= start_ms) & (live["ts"] < end_ms)]
            last = stored.groupby(spec.key)["ts"].max()
            live = live[live["ts"] > live[spec.key].map(last).fillna(-1)]
        merged = pd.concat([f for f in (stored, live) if not f.empty] or [stored])
        # The ring may hold a point twice (the feed re-reads from its last point after a rebalance).
        merged = merged.drop_duplicates(["ts", spec.key], keep="last").sort_values("ts", kind="stable")
        frames[spec.name] = live_buckets(merged, spec, live_bucket_ms) if live_bucket_ms else merged
    return Snapshot(frames, f"{ring.epoch}:{head}", ring_frames, error)


def live_buckets(frame: pd.DataFrame, spec: Topic, width_ms: int) -> pd.DataFrame:
    """`frame`'s raw rows cut into buckets as the live stream (dash_app.live.Buckets) cuts them:
    per bucket and series its last reading, at its own time, and each field's lowest and highest
    (`<field>_min`, `<field>_max`). Rows that are a store's buckets already stay as they are.

    Without it, a live window that the store still returns raw (a young store, the ring's newest
    points) would be drawn raw until it leaves the window: far more points than pixel columns."""
    extremes = [f"{f}_{end}" for f in spec.numeric for end in ("min", "max")]
    raw = frame[frame[extremes].isna().all(axis=1)] if set(extremes) <= set(frame.columns) else frame
    if raw.empty:
        return frame
    groups = raw.groupby([raw[spec.key], (raw["ts"] // width_ms).rename("bucket")], sort=False)
    cut = groups[["ts", *spec.numeric]].last()
    for f in spec.numeric:
        cut[f"{f}_min"], cut[f"{f}_max"] = groups[f].min(), groups[f].max()
    cut = cut.reset_index(level=0).reset_index(drop=True)
    stored = frame.drop(raw.index)
    return pd.concat([f for f in (stored, cut) if not f.empty]).sort_values("ts", kind="stable").reset_index(drop=True)


def _await_store(store: Store, ring_frames: dict[str, pd.DataFrame]) -> None:
    """Wait until, for every series, the store reaches the ring's first point (or give up)."""
    deadline = time.monotonic() + CATCH_UP_S
    for spec in TOPICS.values():
        first = ring_frames[spec.name].groupby(spec.key)["ts"].min()
        while not first.empty:
            try:
                stored = _ms(store.latest(spec)).set_index(spec.key)["ts"]
            except StoreUnavailable:
                return
            behind = first[first.index.map(stored).fillna(-1) < first]
            if behind.empty:
                break
            if time.monotonic() > deadline:
                log.warning("the store has not caught up with the live feed for %s; the chart may show a gap", ", ".join(behind.index))
                return
            time.sleep(0.05)


def latest(store: Store, ring_frames: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """The newest reading per sensor for the cards: {"topic|key": {"ts": ms, "topic": .., "key": .., field: value}}."""
    cards: dict[str, dict] = {}
    for spec in TOPICS.values():
        frames = [ring_frames.get(spec.name)]
        try:
            frames.append(_ms(store.latest(spec)))
        except StoreUnavailable:
            pass
        for frame in frames:
            if frame is None or frame.empty:
                continue
            for row in frame.sort_values("ts").groupby(spec.key).tail(1).itertuples(index=False):
                row = row._asdict()
                ident = f"{spec.name}|{row[spec.key]}"
                if ident not in cards or row["ts"] > cards[ident]["ts"]:
                    cards[ident] = {"ts": int(row["ts"]), "topic": spec.name, "key": row[spec.key], **{f: float(row[f]) for f in spec.numeric}}
    return dict(sorted(cards.items()))
