"""`python -m dash_app`: serve the dashboard on DASH_HOST:DASH_PORT with gunicorn.

One worker process (the live consumer, its ring and the pages it streams to live in it) with a
thread per open page (flask-sock holds one per websocket) plus a few for page loads and
callbacks. Dash's own server is for development: under it flask-sock writes an HTTP response
after every closed socket, and it says itself that it is not for production.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import time

from gunicorn.app.base import BaseApplication

from pipeline import config
from pipeline.daemon import PARENT_ENV, setup_logging, watch_supervisor

# The settings the dashboard reads (all of them are environment variables: see the README).
READS = ("DASH_HOST", "DASH_PORT", "DASH_ALLOWED_HOSTS", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CLIENT_CONFIG", "BROKER_PORT", "STORE_URL",
         "QUESTDB_PG_URL",
         "LIVE_WINDOW_S", "LIVE_MAX_POINTS", "LIVE_BUCKETS", "LIVE_MAX_PAGES", "LOG_LEVEL")
PORT_WAIT_S = 10.0


def parser() -> argparse.ArgumentParser:
    by_env = {s.env: s for s in config.SETTINGS}
    lines = [f"  {env:<24} {by_env[env].default or '(empty)'}" for env in READS]
    return argparse.ArgumentParser(
        prog="python -m dash_app",
        description="Serve the dashboard (page and live websocket) on DASH_HOST:DASH_PORT, reading history from "
        "STORE_URL and the live stream from Kafka. It takes no options: settings are environment variables.",
        epilog="settings it reads (default):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def two_malloc_arenas() -> None:
    """Limit glibc's malloc to two arenas, as MALLOC_ARENA_MAX=2 would (unless that is set).

    glibc gives threads arenas of their own, up to eight per core, and keeps what was freed in
    each. Every renewal of the embedded broker starts the live feed's new Kafka clients, each
    with threads of its own, and the dashboard's memory grew at each renewal and nowhere else
    (README, Performance: Soak). Called before any thread starts; gunicorn's worker, forked from
    this process, inherits the limit."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX from glibc's malloc.h
    except (OSError, AttributeError):  # not glibc: its allocator has no such arenas
        pass


def main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
    two_malloc_arenas()
    cfg = config.load_or_exit()
    supervised = bool(os.environ.get(PARENT_ENV))
    try:
        if not supervised:  # under `run all` the supervisor checked it
            config.check_bootstrap_resolves(cfg)
        # Restarted by `run all` after a crash, the old worker may hold the port a moment longer.
        deadline = time.monotonic() + (PORT_WAIT_S if supervised else 0)
        while True:
            try:
                config.check_port_free(cfg.dash_host, cfg.dash_port, "DASH_PORT", "DASH_HOST")
                break
            except config.ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except config.ConfigError as exc:
        config.fail(str(exc))
    setup_logging(cfg.log_level)
    log = logging.getLogger("dash_app")
    log.info("dashboard on http://%s:%d/", cfg.dash_host, cfg.dash_port)
    watch_supervisor(log, lambda: os.kill(os.getpid(), signal.SIGTERM))  # gunicorn stops gracefully
    Dashboard(cfg).run()
    return 0


class Dashboard(BaseApplication):
    """gunicorn running the Dash app; the live thread starts in the worker, never at import."""

    HTTP_THREADS = 8  # page loads and callbacks, beside one thread per streaming page

    def __init__(self, cfg: config.Config):
        self.settings = cfg
        self.services = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in {
            "bind": [f"{self.settings.dash_host}:{self.settings.dash_port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.live_max_pages + self.HTTP_THREADS,
            "graceful_timeout": 5,
            "loglevel": "warning",  # its start-up lines say nothing ours do not
            "control_socket_disable": True,
            "accesslog": None,
            "post_worker_init": self._started,
            "worker_exit": self._stopping,
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from dash_app.app import create_app
        from dash_app.services import Services

        self.services = Services.from_config(self.settings).start()
        return create_app(self.services).server

    def _started(self, worker) -> None:
        # Open pages hold their threads until they are hung up on: do that first on SIGTERM,
        # so the worker stops within the graceful timeout instead of being killed.
        handler = signal.getsignal(signal.SIGTERM)

        def stop(signum, frame):
            self.services.pages.close_all()
            handler(signum, frame)

        signal.signal(signal.SIGTERM, stop)

    def _stopping(self, _server, _worker) -> None:
        if self.services:
            self.services.stop()


if __name__ == "__main__":
    sys.exit(main())
