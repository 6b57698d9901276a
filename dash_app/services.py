"""What the callbacks share: configuration, the store, the live ring and the health flags."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from dash_app.live import Health, LiveFeed, Pages, Ring
from dash_app.poller_process import PipelinePoller
from pipeline.config import Config
from pipeline.store import Store, StoreUnavailable, open_store

log = logging.getLogger("dash_app")
RING_SIZE = 200_000
STORE_CHECK_S = 2.0
FEED_START_S = 10.0


@dataclass
class Services:
    cfg: Config
    store: Store
    ring: Ring = field(default_factory=lambda: Ring(RING_SIZE))
    health: Health = field(default_factory=Health)
    feed: LiveFeed | None = None
    pipeline: PipelinePoller | None = None  # the /pipeline page's one poller of Kafka's admin API
    tables_ready: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)
    pages: Pages = field(init=False)

    def __post_init__(self) -> None:
        self.pages = Pages(self.cfg.live_max_pages)

    @classmethod
    def from_config(cls, cfg: Config) -> Services:
        return cls(cfg, open_store(cfg.store_url, cfg.questdb_pg_url))

    def start(self) -> Services:
        """Start the live consumer, the store health check and the /pipeline poller (not at import: see __main__)."""
        self.feed = LiveFeed(self.cfg, self.ring, self.health)
        self.feed.start()
        self._check_store()
        # Serve pages only once the ring is filling: a page loaded earlier would miss the points
        # between its history and the start of the stream.
        if not self.feed.ready.wait(FEED_START_S):
            log.warning("live feed not assigned after %.0fs (broker down?); serving history only until it is", FEED_START_S)
        threading.Thread(target=self._watch_store, name="store-health", daemon=True).start()
        self.pipeline = PipelinePoller(self.cfg, self.stopping, feed=self.feed)
        self.pipeline.start()
        return self

    def _watch_store(self) -> None:
        while not self.stopping.wait(STORE_CHECK_S):
            self._check_store()

    def _check_store(self) -> None:
        # Creating the tables (if the writers have not yet) lets a fresh page show empty charts.
        try:
            if not self.tables_ready:
                self.store.ensure_tables()
                self.tables_ready = True
            self.store.ping()
            if not self.health.store_ok:
                log.info("store reachable again")
            self.health.store_ok = True
        except StoreUnavailable as exc:
            if self.health.store_ok:
                log.warning("store unreachable: %s", exc)
            self.health.store_ok = False

    def stop(self) -> None:
        self.stopping.set()
        self.pages.close_all()
        if self.feed:
            self.feed.stop()
            self.feed.join(5)
        if self.pipeline:
            self.pipeline.join(5)
        self.store.close()
