"""Command line: `python -m pipeline.run all | admin | producer NAME | consumer NAME | broker`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

# The standard library only, so that `main` can take signals before the slow imports (Kafka's
# client, pydantic, the store) that the other modules of the product make: a Ctrl-C in the first
# second must stop the command like any other, not end it with a traceback.
from pipeline.daemon import PARENT_ENV, Stop, setup_logging, stop_event

if TYPE_CHECKING:
    from pipeline.config import Config

# Options that override an environment variable for this process and every child it starts,
# validated like the variable itself.
OPTIONS = {
    "--rooms": ("ROOMS", "number of simulated rooms"),
    "--devices": ("DEVICES", "number of devices reporting system usage (the first is this machine)"),
    "--rate": ("RATE", "readings per second per sensor"),
    "--partitions": ("PARTITIONS", "partitions per topic created by topic admin"),
}
# The options each command honours.
COMMAND_OPTIONS = {
    "all": ("--rooms", "--devices", "--rate", "--partitions"),
    "admin": ("--partitions",),
    "producer": ("--rooms", "--devices", "--rate"),
    "consumer": (),
    "alerter": ("--rate",),
    "broker": (),
}


def parser() -> argparse.ArgumentParser:
    from pipeline import config
    from pipeline.schema import TOPICS

    defaults = {s.env: s.default for s in config.SETTINGS}
    p = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Simulated sensors -> Kafka -> store. Settings come from environment variables (see docs/configuration.md); options override them.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "all": "broker (embedded unless KAFKA_BOOTSTRAP_SERVERS is set), topics, producers, writers and the dashboard, supervised",
        "admin": "create the topics and dead-letter topics that are missing",
        "producer": "one producer daemon",
        "consumer": "one store writer daemon (consumer group store-writer.TOPIC)",
        "alerter": "the alerter daemon: the rules (ALERT_RULES) over the readings, changes of state to the alerts topic",
        "broker": "the embedded Kafka-protocol broker alone, in the foreground",
    }
    commands = {}
    for command, flags in COMMAND_OPTIONS.items():
        commands[command] = c = sub.add_parser(command, help=helps[command], description=helps[command])
        for flag in flags:
            env, text = OPTIONS[flag]
            c.add_argument(flag, metavar="N", help=f"{text} (env {env}, default {os.environ.get(env) or defaults[env]})")
    commands["all"].add_argument("--no-dashboard", action="store_true", help="leave the Dash app out")
    commands["producer"].add_argument("topic", choices=list(TOPICS))
    commands["consumer"].add_argument("topic", choices=list(TOPICS))
    return p


def startup(args: argparse.Namespace) -> Config:
    """The validated configuration, written back to the environment for the children; exits 2 on a refused one."""
    from pipeline import config

    overrides = {OPTIONS[flag][0]: getattr(args, flag[2:], None) for flag in COMMAND_OPTIONS[args.command]}
    flags = {OPTIONS[flag][0]: flag for flag in COMMAND_OPTIONS[args.command] if getattr(args, flag[2:], None) is not None}
    cfg = config.load_or_exit(overrides, flags=flags)
    for env, value in overrides.items():
        if value is not None:
            os.environ[env] = value
    try:
        # A supervised child's parent has checked these already: a DNS hiccup must not stop it for good.
        if not os.environ.get(PARENT_ENV) and args.command != "broker":
            config.check_bootstrap_resolves(cfg)
        if args.command == "all" and not args.no_dashboard:
            config.check_port_free(cfg.dash_host, cfg.dash_port, "DASH_PORT", "DASH_HOST")
    except config.ConfigError as exc:
        config.fail(str(exc))
    return cfg


def main(argv: list[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv)[:2] if not a.startswith("-")]
    stop = stop_event(" ".join(words) or "pipeline.run")  # first: see the imports
    from confluent_kafka import KafkaException

    from pipeline.broker import BrokerError

    args = parser().parse_args(argv)
    cfg = startup(args)
    setup_logging(cfg.log_level)
    try:
        return dispatch(args, cfg, stop)
    except BrokerError as exc:
        logging.getLogger(args.command).error("%s", exc)
        return 1
    except KafkaException as exc:
        logging.getLogger(args.command).error("Kafka at %s: %s", cfg.bootstrap_servers, exc.args[0].str())
        return 1


def dispatch(args: argparse.Namespace, cfg: Config, stop: Stop) -> int:
    from pipeline.schema import TOPICS

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
        from pipeline.write_behind import WriteBehind

        with WriteBehind(cfg) as writes:
            writer.run(cfg, TOPICS[args.topic], writes, stop)
        return 0
    if args.command == "alerter":
        from pipeline import alerter, rules
        from pipeline.store import open_store

        with open_store(cfg.store_url, cfg.questdb_pg_url) as store:
            alerter.run(cfg, rules.load(cfg.alert_rules), store, stop)
        return 0
    if args.command == "broker":
        from pipeline.broker import EmbeddedBroker

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
