"""gunicorn serving the Dash app: one worker process, a thread per open page.

The live consumer, its ring and the pages it streams to live in the worker. flask-sock holds a
thread per websocket, plus a few for page loads and callbacks. Dash's own server is for
development: under it flask-sock writes an HTTP response after every closed socket.
"""
from __future__ import annotations

import os
import signal
import threading

from gunicorn.app.base import BaseApplication

from pipeline import config
from pipeline.daemon import Stop, die_with_parent


class Dashboard(BaseApplication):
    """gunicorn running the Dash app; the live thread starts in the worker, never at import."""

    HTTP_THREADS = 8  # page loads and callbacks, beside one thread per streaming page

    def __init__(self, cfg: config.Config, stop: Stop):
        self.settings, self.stop = cfg, stop  # `stop`: set by a signal before gunicorn took them, or the supervisor's death
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
            "when_ready": self._ready,
            "post_fork": self._forked,
            "post_worker_init": self._started,
            "worker_exit": self._stopping,
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from dash_app.app import create_app
        from dash_app.services import Services

        self.services = Services.from_config(self.settings).start()
        return create_app(self.services).server

    def _ready(self, _server) -> None:
        # gunicorn's master handles SIGINT and SIGTERM from here on; a stop asked before, or
        # by the supervisor's death, becomes the SIGTERM that stops it gracefully.
        def relay():
            self.stop.wait()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=relay, name="stop-relay", daemon=True).start()

    @staticmethod
    def _forked(server, _worker) -> None:
        die_with_parent(server.pid)  # the worker dies with gunicorn's master, even a killed one

    def _started(self, worker) -> None:
        # Open pages hold their threads until they are hung up on: do that first on SIGTERM,
        # so the worker stops within the graceful timeout instead of being killed. From a thread:
        # hanging up takes locks, which a signal handler must not (see pipeline.daemon.Stop).
        handler, hang_up = signal.getsignal(signal.SIGTERM), Stop()

        def stop(signum, frame):
            hang_up.set()
            handler(signum, frame)

        def hang_up_all():
            hang_up.wait()
            self.services.pages.close_all()

        threading.Thread(target=hang_up_all, name="hang-up", daemon=True).start()
        signal.signal(signal.SIGTERM, stop)

    def _stopping(self, _server, _worker) -> None:
        if self.services:
            self.services.stop()

