"""/pipeline against the real embedded stack, and the pieces it is built from.

The browser test runs `run all --no-dashboard`, serves the app through dash_duo (its poller
included), starts a second store writer by hand as the README's walkthrough does, and checks
what the page says against what the writers themselves log.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
from confluent_kafka import Producer

from dash_app.app import create_app
from dash_app.group_wire import client_id_of, parse_assignment, parse_response
from dash_app.live import FEED_TOPICS
from dash_app.pipeline_poller import group_topics, range_assign
from dash_app.services import Services
from pipeline.broker import current_address
from pipeline.schema import TOPICS, InvalidMessage, validate
from tests.helpers import on_each_backend, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

MEMBERS = """
return Array.from(document.querySelectorAll('tr.member')).map(tr => ({
    group: tr.dataset.group, member: tr.dataset.member,
    partitions: tr.dataset.partitions ? tr.dataset.partitions.split(' ') : [],
}));
"""


def test_range_assign_matches_librdkafka_range_assignor():
    # Members sorted by id; 3 partitions over 2 members: the first gets 2, the second 1.
    assert range_assign(["b", "a"], {"t": 3}) == {"a": [("t", 0), ("t", 1)], "b": [("t", 2)]}
    assert range_assign(["a"], {"t": 3, "u": 2}) == {"a": [("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1)]}
    assert range_assign(["a", "b", "c", "d"], {"t": 3})["d"] == []
    assert range_assign([], {"t": 3}) == {}


def test_group_topics_and_client_ids():
    assert group_topics("store-writer.temperature", FEED_TOPICS) == ["temperature"]
    assert group_topics("dashboard-0123456789ab", FEED_TOPICS) == [*TOPICS, "alerts"]
    assert group_topics("alerter", FEED_TOPICS) == [n for t in TOPICS.values() for n in (t.name, t.dlq)]
    assert group_topics("someone-else", FEED_TOPICS) is None
    assert client_id_of("writer-humidity-9011fb51-904e-4ccf-b42a-d5e862826dbf") == "writer-humidity"
    assert client_id_of("odd") == "odd"


def test_describe_groups_response_is_parsed():
    def s(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + text.encode()

    assignment = (0).to_bytes(2, "big") + (1).to_bytes(4, "big") + s("t") + (2).to_bytes(4, "big") \
        + (0).to_bytes(4, "big") + (2).to_bytes(4, "big") + (0).to_bytes(4, "big")
    member = s("c-9011fb51-904e-4ccf-b42a-d5e862826dbf") + s("") + s("") + (0).to_bytes(4, "big") \
        + len(assignment).to_bytes(4, "big") + assignment
    body = (7).to_bytes(4, "big") + (1).to_bytes(4, "big") + (0).to_bytes(2, "big") + s("g") + s("Stable") \
        + s("consumer") + s("") + (1).to_bytes(4, "big") + member
    (group,) = parse_response(body)
    assert (group.group_id, group.state, len(group.members)) == ("g", "Stable", 1)
    assert group.members[0].client_id == "c" and group.members[0].assignment == {"t": [0, 2]}
    assert parse_assignment(b"") == {}


def members(duo, group: str) -> list[dict]:
    return [m for m in duo.driver.execute_script(MEMBERS) if m["group"] == group]


def texts(duo, selector: str) -> list[str]:
    """The textContent of every element matching `selector`, read in the page at one instant
    (textContent, not Selenium's .text, which is empty for a row scrolled out of its table's box)."""
    return duo.driver.execute_script("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", selector)


def split_covers_all(found: list[dict], count: int, partitions: int) -> bool:
    owned = [set(m["partitions"]) for m in found]
    union = set().union(*owned) if owned else set()
    return (len(found) == count and sum(map(len, owned)) == len(union)
            and union == {f"temperature/{p}" for p in range(partitions)} and all(owned))


@on_each_backend
def test_pipeline_page_shows_topics_groups_a_rebalance_and_dead_letters(dash_duo, pipeline):
    services = Services.from_config(pipeline.config()).start()
    try:
        dash_duo.start_server(create_app(services))
        duo = dash_duo
        duo.driver.get(duo.server_url + "/pipeline")
        partitions = pipeline.config().partitions
        # The first poll's answer: on Apache Kafka it waits for every group's description, which
        # took about 20 s on a busy two-core machine.
        duo.wait_for_element("#topics-table", timeout=60)
        for topic in TOPICS:
            duo.wait_for_contains_text("#topics-table", f"{topic}.dlq", timeout=20)
            duo.wait_for_element(f'#topics-table tr[data-topic="{topic}"]')
            duo.wait_for_element(f'.group[data-group="store-writer.{topic}"]', timeout=20)
        # The alerter reads every reading and dead letter in a group of its own and publishes to `alerts`.
        duo.wait_for_element('#topics-table tr[data-topic="alerts"]', timeout=20)
        duo.wait_for_contains_text('.group[data-group="alerter"] h3', "the alerter", timeout=20)
        # Each dashboard process reads every partition of every topic (the alerts too) in a group of its own.
        dashboards = wait_for(lambda: [m for m in duo.driver.execute_script(MEMBERS) if m["group"].startswith("dashboard-")],
                              20, "the dashboard's own group")
        assert len(dashboards) == 1 and len(dashboards[0]["partitions"]) == len(FEED_TOPICS) * partitions
        # Its group commits nothing; its lag is measured from where its feed has read to, and charted.
        own = dashboards[0]["group"]
        lag = wait_for(lambda: "".join(texts(duo, f'.group[data-group="{own}"] .lag')), 20, "the dashboard's lag")
        assert re.match(r"lag [\d,]+: ", lag) and "this dashboard's read position→end" in lag, lag
        wait_for(lambda: own in duo.driver.execute_script(
            "return document.getElementById('pipeline-lag').querySelector('.js-plotly-plot').data.map(t => t.name)"), 10,
            "the dashboard's group in the lag chart")
        group = "store-writer.temperature"
        wait_for(lambda: split_covers_all(members(duo, group), 1, partitions), 20, "one writer owning every partition")
        (first,) = members(duo, group)
        # Read in the page, not through an element handle: the page re-renders every poll, and a
        # handle taken just before can be stale by the time its text is read.
        wait_for(lambda: "Stable" in "".join(texts(duo, f'.group[data-group="{group}"] h3')), 10, "the group Stable")

        # A second writer, as in the README: it appears as a second member; the partitions are split.
        started = time.monotonic()
        log_name = "second-writer"
        with pipeline.running("pipeline.run", "consumer", "temperature", log_name=log_name):
            wait_for(lambda: split_covers_all(members(duo, group), 2, partitions), 20, "two members splitting the partitions")
            assert time.monotonic() - started < 20
            (second,) = [m for m in members(duo, group) if m["member"] != first["member"]]
            # The page's (computed) assignment is what the new writer says it was given.
            assigned = wait_for(lambda: re.findall(r"assigned partitions \[([\d, ]*)\]", pipeline.log(log_name)), 10, "the writer's log")
            logged = {f"temperature/{p}" for p in assigned[-1].split(", ") if p}
            assert set(second["partitions"]) == logged, (second, assigned)
            chart = duo.driver.execute_script(
                "return document.getElementById('pipeline-lag').querySelector('.js-plotly-plot').data.map(t => t.name)")
            assert group in chart
        stopped = time.monotonic()
        wait_for(lambda: split_covers_all(members(duo, group), 1, partitions), 40, "the partitions given back")
        assert time.monotonic() - stopped < 40
        events = duo.driver.execute_script(
            "return (document.getElementById('pipeline-lag').querySelector('.js-plotly-plot').data"
            ".find(t => t.name === 'rebalance') || {text: []}).text")
        assert any(group in e for e in events), events

        # A malformed message: the writer dead-letters it, the page shows it with its reason.
        bad = b'{"ts": 1, "room": "kitchen", "value": 21.5, "unit": "\xc2\xb0C"}'
        with pytest.raises(InvalidMessage) as refused:
            validate(TOPICS["temperature"], bad, b"kitchen", int(time.time() * 1000))
        producer = Producer({"bootstrap.servers": current_address(pipeline.config())})
        producer.produce("temperature", key=b"kitchen", value=bad)
        assert producer.flush(10) == 0
        del producer  # no reconnect attempts logged once the fixture stops the broker
        wait_for(lambda: any(str(refused.value) in text for text in texts(duo, 'tr.dead-letter[data-topic="temperature"]')),
                 60, "the dead letter on the page")
        # The poller's process dies as librdkafka's abort would end it: another carries on from its
        # last snapshot (the dead letter shown once, not read again), and the page keeps updating.
        dead_rows = 'tr.dead-letter[data-topic="temperature"]'
        assert len(texts(duo, dead_rows)) == 1
        os.kill(services.pipeline.pid, signal.SIGABRT)
        wait_for(lambda: services.pipeline.restarts == 1 and services.pipeline.latest()[1].get("ok"), 60, "a new poller process polling")
        before = "".join(texts(duo, "#pipeline-updated"))
        wait_for(lambda: (now := "".join(texts(duo, "#pipeline-updated"))) != before and now.startswith("updated"), 10,
                 "the page updated by the new poller")
        assert len(texts(duo, dead_rows)) == 1 and any(str(refused.value) in t for t in texts(duo, dead_rows))
        assert duo.get_logs() == [], "browser console errors"
        # The sensor page still works beside it, reached through the shared navigation.
        duo.find_element("#nav-sensors").click()
        duo.wait_for_text_to_equal("#status", "live", timeout=30)
    finally:
        services.stop()
