"""Command line: `python -m pipeline.run all | admin | producer NAME | consumer NAME | broker`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from confluent_kafka import KafkaException

from pipeline import config
from pipeline.broker import BrokerError, EmbeddedBroker
from pipeline.daemon import setup_logging, stop_event
from pipeline.schema import TOPICS

# Options that override an environment variable for this process and every child it starts.
OPTIONS = (
    ("--rooms", "ROOMS", int, "number of simulated rooms"),
    ("--devices", "DEVICES", int, "number of devices reporting system usage (the first is this machine)"),
    ("--rate", "RATE", float, "readings per second per sensor"),
    ("--partitions", "PARTITIONS", int, "partitions per topic created by topic admin"),
)


def parser() -> argparse.ArgumentParser:
    defaults = {s.env: s.default for s in config.SETTINGS}
    common = argparse.ArgumentParser(add_help=False)
    for flag, env, kind, text in OPTIONS:
        common.add_argument(flag, type=kind, metavar="N", help=f"{text} (env {env}, default {os.environ.get(env) or defaults[env]})")
    p = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Simulated sensors -> Kafka -> store. Settings come from environment variables (see README); options override them.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    a = sub.add_parser("all", parents=[common], help="broker (embedded unless KAFKA_BOOTSTRAP_SERVERS is set), topics, producers, writers and the dashboard, supervised")
    a.add_argument("--no-dashboard", action="store_true", help="leave the Dash app out")
    sub.add_parser("admin", parents=[common], help="create the topics and dead-letter topics that are missing")
    sub.add_parser("producer", parents=[common], help="one producer daemon").add_argument("topic", choices=list(TOPICS))
    sub.add_parser("consumer", parents=[common], help="one store writer daemon (consumer group store-writer.TOPIC)").add_argument("topic", choices=list(TOPICS))
    sub.add_parser("broker", parents=[common], help="the embedded Kafka-protocol broker alone, in the foreground")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for flag, env, _kind, _text in OPTIONS:
        value = getattr(args, flag.lstrip("-"))
        if value is not None:
            os.environ[env] = str(value)
    cfg = config.load()
    setup_logging(cfg)
    stop = stop_event(" ".join([args.command, getattr(args, "topic", "")]).strip())
    try:
        return dispatch(args, cfg, stop)
    except BrokerError as exc:
        logging.getLogger(args.command).error("%s", exc)
        return 1
    except KafkaException as exc:
        logging.getLogger(args.command).error("Kafka at %s: %s", cfg.bootstrap_servers, exc.args[0].str())
        return 1


def dispatch(args: argparse.Namespace, cfg: config.Config, stop) -> int:
    if args.command == "all":
        from pipeline import supervisor

        return supervisor.run(cfg, stop, with_dashboard=not args.no_dashboard)
    if args.command == "admin":
        from pipeline.admin import ensure_topics

        ensure_topics(cfg)
        return 0
    if args.command == "producer":
        from pipeline import producer

        producer.run(cfg, TOPICS[args.topic], stop)
        return 0
    if args.command == "consumer":
        from pipeline import writer
        from pipeline.store import open_store

        with open_store(cfg.store_url) as store:
            writer.run(cfg, TOPICS[args.topic], store, stop)
        return 0
    if args.command == "broker":
        broker = EmbeddedBroker(cfg)
        broker.start()
        print(f"broker listening on {broker.address}; Ctrl-C stops it", flush=True)
        try:
            while not stop.wait(0.5):
                if broker.returncode() is not None:
                    logging.getLogger("broker").error("broker exited with code %s", broker.returncode())
                    return 1
        finally:
            broker.stop()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
