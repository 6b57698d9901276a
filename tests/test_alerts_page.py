"""The alerts on the real page: a produced spike fires on the page within 2 s of the event time of
the reading that fired it, marks its sensor's card and bands its chart, and resolves after it ends;
the webhook's failed deliveries show among the pipeline page's dead letters.

The pipeline (`run all --no-dashboard`, its alerter with a rule of `for_s` 1 s) runs as
processes; the page is dash_duo's, with its live feed reading the `alerts` topic."""
from __future__ import annotations

import json

import pytest

from tests.helpers import wait_for
from tests.test_alerts_pipeline import RULES_TOML, Hook, Spikes

# When each alert row first shows as firing: [episode, page clock ms, event time of the firing reading].
WATCH = """
window.firingSeen = [];
const seen = new Set();
const note = () => document.querySelectorAll('div.alerts-now .alert-row[data-state="firing"]').forEach(row => {
  const key = row.dataset.alert + '|' + row.dataset.firing;
  if (!seen.has(key)) { seen.add(key); window.firingSeen.push([key, Date.now(), Number(row.dataset.firing)]); }
});
new MutationObserver(note).observe(document.getElementById('alerts'), {childList: true, subtree: true, attributes: true});
note();
"""
BANDS = """return (document.getElementById(arguments[0]).querySelector('.js-plotly-plot').layout.shapes || [])
  .map(s => String(s.name || '')).filter(n => n.startsWith('alert|'));"""

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # as tests/test_dashboard.py


@pytest.fixture
def hot_rule(stack, tmp_path):
    """Rule `hot`: temperature above 25 °C for 1 s (hysteresis 1), for the whole stack, and a
    webhook whose server refuses every call."""
    (tmp_path / "rules.toml").write_text(RULES_TOML)
    hook = Hook(fail=10**9)
    stack.env.update(ALERT_RULES=str(tmp_path / "rules.toml"), ALERT_WEBHOOK_URL=hook.url)
    yield stack
    hook.close()


def test_a_spike_fires_on_the_page_within_2_s_and_resolves_after_it_ends(hot_rule, dashboard):
    duo, services = dashboard
    duo.wait_for_text_to_equal("#status", "live", timeout=30)
    duo.driver.execute_script(WATCH)
    spikes = Spikes(services.cfg)  # room `lab`: 3 s at 30 °C, 3 s at 20 °C, over and over
    spikes.start()
    try:
        wait_for(lambda: [s for s in duo.driver.execute_script("return window.firingSeen") if s[0].startswith("hot|lab|")][2:],
                         60, "three firings of hot/lab on the page")
        delays = [shown - event for _, shown, event in duo.driver.execute_script("return window.firingSeen") if _.startswith("hot|lab|")]
        print(f"event time -> firing shown, ms: {delays}")
        assert all(0 <= d <= 2000 for d in delays), f"firing shown too late: {delays} ms"

        # After each spike the alert resolves: the log of the last 24 h says so.
        wait_for(lambda: duo.find_elements('div.alerts-log .alert-change[data-alert="hot|lab"][data-state="resolved"]'), 10,
                 "a resolved change of hot/lab in the last 24 h")
        # While it fires, the sensor's card is marked and the temperature chart has a band over it.
        card = '.card[data-sensor="temperature|lab"]'
        # Read in the page: the cards are drawn anew every second, so an element handle can be stale when read.
        wait_for(lambda: "card-firing" in (duo.driver.execute_script("return document.querySelector(arguments[0])?.className", card) or ""),
                 30, "the lab card marked as firing")
        chart = json.dumps({"id": "temperature", "type": "chart"}, separators=(",", ":"))
        # Lab's bands (a simulated room that overheats may fire the rule too, with bands of its own).
        wait_for(lambda: [b for b in duo.driver.execute_script(BANDS, chart) if b.startswith("alert|hot|lab|")], 10,
                 "alert bands of hot/lab on the temperature chart")

        # The webhook's server refused every call: each failed attempt is a dead letter of `alerts`.
        duo.driver.get(duo.server_url + "/pipeline")
        # Read in the page: it re-renders every poll, so an element handle can be stale when read.
        dead = wait_for(lambda: duo.driver.execute_script(
            "return [...document.querySelectorAll('#dead-table tr[data-topic=\"alerts\"]')].map(r => r.textContent)"), 60,
            "dead letters of alerts on /pipeline")
        assert all("webhook: HTTP 503" in row for row in dead), dead
    finally:
        spikes.stopping.set()
        spikes.join(10)
    assert duo.get_logs() == [], "browser console errors"
