"""`python -m dash_app`: serve the dashboard on DASH_HOST:DASH_PORT with gunicorn (dash_app/server.py)."""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
import time

# The standard library only, so that `main` takes signals before the slow imports (see pipeline.run).
from pipeline.daemon import PARENT_ENV, setup_logging, stop_event

# The settings the dashboard reads (all of them are environment variables: docs/configuration.md).
READS = ("DASH_HOST", "DASH_PORT", "DASH_ALLOWED_HOSTS", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CLIENT_CONFIG", "BROKER_PORT", "STORE_URL",
         "QUESTDB_PG_URL",
         "LIVE_WINDOW_S", "LIVE_MAX_POINTS", "LIVE_BUCKETS", "LIVE_DRAW_BUDGET_MS", "LIVE_MAX_PAGES", "LOG_LEVEL")
PORT_WAIT_S = 10.0


def parser() -> argparse.ArgumentParser:
    from pipeline import config

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
    (docs/performance.md, Soak). Called before any thread starts; gunicorn's worker, forked from
    this process, inherits the limit."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX from glibc's malloc.h
    except (OSError, AttributeError):  # not glibc: its allocator has no such arenas
        pass


def main(argv: list[str] | None = None) -> int:
    two_malloc_arenas()
    stop = stop_event("dash_app")  # first: see the imports
    from dash_app.server import Dashboard
    from pipeline import config

    parser().parse_args(argv)
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
                if stop.wait(0.2):
                    return 0
    except config.ConfigError as exc:
        config.fail(str(exc))
    setup_logging(cfg.log_level)
    log = logging.getLogger("dash_app")
    log.info("dashboard on http://%s:%d/", cfg.dash_host, cfg.dash_port)
    Dashboard(cfg, stop).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())


