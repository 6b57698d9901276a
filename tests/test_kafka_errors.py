"""Kafka client errors are summarized: a line per kind and state change, counts per interval."""
import logging

from confluent_kafka import KafkaError

from pipeline.kafka import ErrorSummary


def probe_lines(caplog) -> list[str]:
    """The lines of this test's summary: Kafka clients other tests left behind may log too."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("kafka probe:")]


def test_a_broker_down_makes_a_few_lines_not_one_per_failed_connect(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.kafka")
    now = [1000.0]
    summary = ErrorSummary("probe", interval=10, quiet=15, clock=lambda: now[0])
    refused = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    summary(refused)
    summary(down)
    for i in range(1, 601):  # a minute of failed reconnects, ten a second
        now[0] = 1000 + i / 10
        summary(refused)
        summary.tick(now[0])
    summary.tick(1060 + 15)  # then quiet: the broker is back
    lines = probe_lines(caplog)
    assert lines[:2] == [f"kafka probe: {refused.str()}", f"kafka probe: {down.str()}"]
    counts = [line for line in lines if "more error(s) in the last" in line]
    assert len(counts) == 6 and all(line.endswith(f"latest: {refused.str()}") for line in counts)
    assert lines[-1] == "kafka probe: no error for 15 s; 602 error(s) in the 60 s before"
    assert len(lines) == 9
    # A new episode starts afresh and is announced again.
    summary(refused)
    assert probe_lines(caplog)[-1] == f"kafka probe: {refused.str()}"


def test_fatal_errors_are_always_logged(caplog):
    summary = ErrorSummary("probe")
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    summary(fatal)
    summary(fatal)
    assert [r.levelname for r in caplog.records if r.getMessage().startswith("kafka probe:")] == ["ERROR", "ERROR"]
