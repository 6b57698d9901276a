"""`python -m dash_app`: serve the dashboard on DASH_HOST:DASH_PORT."""
from __future__ import annotations

import logging
import signal
import sys

from dash_app.app import create_app
from dash_app.services import Services
from pipeline import config
from pipeline.daemon import setup_logging


def main() -> int:
    cfg = config.load()
    setup_logging(cfg)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
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
