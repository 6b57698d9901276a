"""Integration: the alerter under `run all`, killed while an alert fires and with the embedded
broker renewed under it, loses and repeats nothing; the webhook retries a failing server."""
from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil

from pipeline import kafka
from pipeline.alerts import Alert
from pipeline.broker import current_address
from pipeline.evaluate import Engine
from pipeline.rules import Threshold
from pipeline.schema import TOPICS, Temperature, as_batch
from pipeline.store import open_store
from pipeline.supervisor import STOP_BUDGET_S
from pipeline.webhook import Webhook
from tests.helpers import stop_process, wait_for

RULE = Threshold(name="hot", topic="temperature", kind="above", field="value", threshold=25, for_s=1, hysteresis=1)
RULES_TOML = """[[rules]]
name = "hot"
kind = "above"
topic = "temperature"
field = "value"
threshold = 25
for_s = 1
hysteresis = 1
"""


class Hook:
    """A local HTTP server that records what is POSTed to it, refusing the first `fail` calls with 503."""

    def __init__(self, fail: int = 0):
        self.received: list[dict] = []
        self.calls = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.calls += 1
                if hook.calls <= fail:
                    self.send_response(503)
                else:
                    hook.received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Spikes(threading.Thread):
    """Readings of room `lab`, 5 a second, 3 s at 30 °C then 3 s at 20 °C, sent to whichever
    embedded broker is current (it follows renewals as the producers do)."""

    def __init__(self, cfg):
        super().__init__(daemon=True)
        self.cfg, self.sent, self.stopping = cfg, [], threading.Event()

    def run(self):
        address = current_address(self.cfg)
        producer = kafka.producer(self.cfg, "test-spikes", bootstrap=address)
        started = time.time()
        while not self.stopping.is_set():
            now = current_address(self.cfg)
            if now != address:
                producer.flush(10)
                address, producer = now, kafka.producer(self.cfg, "test-spikes", bootstrap=now)
            ts = int(time.time() * 1000)
            value = 30.0 if (time.time() - started) % 6 < 3 else 20.0
            producer.produce("temperature", key=b"lab", value=json.dumps({"ts": ts, "room": "lab", "value": value, "unit": "°C"}).encode())
            producer.flush(5)
            self.sent.append((ts, value))
            time.sleep(0.2)


def alerter_pid(run_all) -> int | None:
    for child in psutil.Process(run_all.pid).children():
        try:
            if "alerter" in child.cmdline():
                return child.pid
        except psutil.Error:
            pass
    return None


def test_alerter_killed_while_firing_and_broker_renewed_loses_and_repeats_nothing(stack, tmp_path):
    hook = Hook()
    (tmp_path / "rules.toml").write_text(RULES_TOML)
    stack.env.update(ALERT_RULES=str(tmp_path / "rules.toml"), ALERT_WEBHOOK_URL=hook.url, BROKER_MAX_MB="1", RATE="2")
    proc = stack.spawn("pipeline.run", "all", "--no-dashboard", log_name="all")
    spikes = Spikes(stack.config())
    try:
        wait_for(lambda: "state rebuilt" in stack.log("all"), 60, "the alerter to start")
        spikes.start()
        kills = 0
        for _ in range(2):  # kill it while an alert fires, once before a renewal and once after
            renewals = stack.log("all").count("embedded broker renewed")
            fired = stack.log("all").count("firing hot/lab")
            wait_for(lambda f=fired: stack.log("all").count("firing hot/lab") > f, 60, "an alert firing")
            pid = alerter_pid(proc)
            psutil.Process(pid).send_signal(signal.SIGKILL)
            kills += 1
            wait_for(lambda p=pid: alerter_pid(proc) not in (None, p), 30, "the alerter restarted")
            wait_for(lambda r=renewals: stack.log("all").count("embedded broker renewed") > r, 90, "a broker renewal", interval=0.5)
        spikes.stopping.set()
        spikes.join(10)

        # What the rule makes of what was sent, evaluated in one go: every change, once.
        expected = Engine([RULE], 500).readings(as_batch(TOPICS["temperature"], [
            Temperature(ts=ts, room="lab", value=v, unit="°C") for ts, v in sorted(spikes.sent)]))
        want = {(a.since, a.state) for a in expected}
        assert len(want) >= 9, "at least three episodes"

        def stored() -> set:
            with open_store(stack.store_url) as store:
                return {(a.since, a.state) for a in store.alerts(0) if a.rule == "hot" and a.sensor == "lab"}

        try:
            wait_for(lambda: stored() >= want, 60, "every change in the store")
        except AssertionError:
            raise AssertionError(f"missing {sorted(want - stored())}, extra {sorted(stored() - want)}") from None
        assert stored() == want, "no change the rule does not make"
        wait_for(lambda: len(hook.received) >= len(want) - 2, 30, "the webhook deliveries")
        # Lab's changes: a simulated room that overheats may fire the rule too.
        delivered = [(a["since"], a["state"]) for a in hook.received if a["rule"] == "hot" and a["sensor"] == "lab"]
        assert len(delivered) == len(set(delivered)), "a change was repeated"
        assert set(delivered) <= want
        # The last alerter restarted may still be reading the changelog.
        wait_for(lambda: stack.log("all").count("state rebuilt") >= 3, 60, "the third alerter's state rebuilt")
        log = stack.log("all")
        assert kills == 2
        assert "Traceback" not in log, log[-3000:]
    finally:
        spikes.stopping.set()
        code = stop_process(proc, signal.SIGINT, STOP_BUDGET_S)
        hook.close()
    assert code == 0


def test_webhook_retries_a_server_that_fails_its_first_calls():
    hook = Hook(fail=3)
    stop = threading.Event()
    webhook = Webhook(hook.url, stop)
    webhook.start()
    alerts = [Alert(rule="hot", sensor="lab", topic="temperature", state=s, since=1, ts=i, seen=i) for i, s in enumerate(("pending", "firing"))]
    try:
        began = time.monotonic()
        webhook.send(alerts)  # returns at once: delivery is the thread's
        assert time.monotonic() - began < 0.1
        # The server has the second POST before the webhook has read the answer and counted it.
        wait_for(lambda: len(hook.received) == 2 and webhook.status["delivered"] == 2, 30, "both delivered")
        assert [a["state"] for a in hook.received] == ["pending", "firing"], "in order"
        assert hook.calls == 5 and webhook.status["failures"] == 3
        assert "503" in webhook.status["last_error"]
        # Each failure waits for the alerter, which publishes it to alerts.dlq (the pipeline page's dead letters).
        failures = [webhook.failures.get_nowait() for _ in range(webhook.failures.qsize())]
        assert [(a.state, r.split(";")[0]) for a, r in failures] == [("pending", "webhook: HTTP 503 Service Unavailable")] * 3
        assert [r.split("; ")[1].split(",")[0] for _, r in failures] == ["attempt 1 of 10", "attempt 2 of 10", "attempt 3 of 10"]
    finally:
        stop.set()
        hook.close()
