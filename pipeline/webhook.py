"""ALERT_WEBHOOK_URL: each change of an alert's state POSTed as JSON, from a thread of its own.

The alerter hands changes over and moves on (`send` never waits): they go out one at a time, in
order, each retried with back-off (pipeline.daemon.backoff) until the server answers 2xx or
MAX_ATTEMPTS have failed. A queue that outgrows QUEUE_MAX (a server down for long) drops its
oldest change. Every failure is counted in `status`, which the alerter logs, and queued in
`failures` (the change, what went wrong), which the alerter publishes to the `alerts.dlq` topic:
the pipeline page shows them among the dead letters.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request

import msgspec

from pipeline.alerts import Alert
from pipeline.daemon import backoff

log = logging.getLogger("alerter.webhook")
MAX_ATTEMPTS = 10  # 0.5 + 1 + 2 + 4 + 8 + 10 ... : about a minute of trying
QUEUE_MAX = 1000
TIMEOUT_S = 5.0


class Webhook(threading.Thread):
    def __init__(self, url: str, stop: threading.Event):
        super().__init__(name="webhook", daemon=True)
        self.url, self.stop = url, stop
        self.queue: queue.Queue[Alert] = queue.Queue()
        self.failures: queue.Queue[tuple[Alert, str]] = queue.Queue(maxsize=QUEUE_MAX)  # taken by the alerter
        self.status = {"delivered": 0, "failures": 0, "dropped": 0, "last_error": "", "last_error_at": 0.0}

    def send(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if self.queue.qsize() >= QUEUE_MAX:
                try:
                    self.queue.get_nowait()
                    self.status["dropped"] += 1
                except queue.Empty:
                    pass
            self.queue.put(alert)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                alert = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(msgspec.to_builtins(alert)).encode()
        for attempt in range(MAX_ATTEMPTS):
            try:
                request = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                    answer.read()
                self.status["delivered"] += 1
                if attempt:
                    log.info("webhook delivered %s %s/%s after %d failed attempt(s)", alert.state, alert.rule, alert.sensor, attempt)
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
                self.status["failures"] += 1
                self.status["last_error"], self.status["last_error_at"] = f"{reason}", time.time()
                delay = backoff(attempt, cap=10.0)
                last = attempt + 1 == MAX_ATTEMPTS
                self._failed(alert, f"webhook: {reason}; attempt {attempt + 1} of {MAX_ATTEMPTS}, "
                                    + ("given up" if last else f"retrying in {delay:.1f} s"))
                if last:
                    break
                log.warning("webhook %s: %s %s/%s not delivered (%s); attempt %d of %d, retrying in %.1fs",
                            self.url, alert.state, alert.rule, alert.sensor, reason, attempt + 1, MAX_ATTEMPTS, delay)
                if self.stop.wait(delay):
                    return
        self.status["dropped"] += 1
        log.error("webhook %s: gave up on %s %s/%s after %d attempts", self.url, alert.state, alert.rule, alert.sensor, MAX_ATTEMPTS)

    def _failed(self, alert: Alert, reason: str) -> None:
        try:
            self.failures.put_nowait((alert, reason))
        except queue.Full:
            pass  # the alerter has not taken them (stopping); the log and `status` still count it
