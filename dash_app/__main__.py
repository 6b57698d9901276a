"""`python -m dash_app`: serve the dashboard on DASH_HOST:DASH_PORT."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pipeline import config
from pipeline.daemon import PARENT_ENV, setup_logging

# The settings the dashboard reads (all of them are environment variables: see the README).
READS = ("DASH_HOST", "DASH_PORT", "KAFKA_BOOTSTRAP_SERVERS", "BROKER_PORT", "STORE_URL",
         "LIVE_WINDOW_S", "LIVE_MAX_POINTS", "LIVE_BUCKETS", "LOG_LEVEL")


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


def main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
    cfg = config.load_or_exit()
    try:
        if not os.environ.get(PARENT_ENV):  # under `run all` the supervisor checked it
            config.check_bootstrap_resolves(cfg)
        config.check_port_free(cfg.dash_host, cfg.dash_port, "DASH_PORT", "DASH_HOST")
    except config.ConfigError as exc:
        config.fail(str(exc))
    setup_logging(cfg)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    from dash_app.app import create_app
    from dash_app.services import Services

    # The live thread starts here, not at import, so that a reloader or a WSGI server importing
    # the module never runs it twice.
    services = Services.from_config(cfg).start()
    app = create_app(services)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("dash_app").info("dashboard on http://%s:%d/", cfg.dash_host, cfg.dash_port)
    try:
        app.run(host=cfg.dash_host, port=cfg.dash_port, debug=False)
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
