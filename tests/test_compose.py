"""docker-compose.yml, checked without a Docker engine for what a user relies on.

`docker-compose config` (Debian's docker-compose 1.29, installed by tests/run.sh) validates the
file and prints it normalized (anchors merged, every profile's services); without it the file
itself is read.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

from pipeline import config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DOC = (ROOT / "docs" / "kafka-and-questdb.md").read_text()
DOCKER_COMPOSE = shutil.which("docker-compose")
CLUSTER_BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
STACKS = {"single": (["kafka"], ["pipeline", "dashboard"]), "cluster": (CLUSTER_BROKERS, ["pipeline-cluster", "dashboard-cluster"])}


def compose(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}  # COMPOSE_PROFILES etc. must not count
    return subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE_FILE), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    text = COMPOSE_FILE.read_text()
    if DOCKER_COMPOSE:
        result = compose("--profile", "cluster", "config")
        assert result.returncode == 0, result.stderr
        text = result.stdout
    return yaml.safe_load(text)["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, short or long syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split(":")
            out.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else ""))
    return out


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed (tests/run.sh installs Debian's)")
@pytest.mark.parametrize("profile", [[], ["--profile", "cluster"]], ids=["default", "cluster"])
def test_docker_compose_validates_the_file(profile):
    result = compose(*profile, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_every_service_the_docs_name_exists(services):
    starts = re.search(r"This starts (\w+) services: (.*?)\n\n", COMPOSE_DOC, re.DOTALL)
    cluster = re.search(r"\*\*Three-broker cluster\.\*\*(.*?)\n\n", COMPOSE_DOC, re.DOTALL)
    default = re.findall(r"`([a-z][a-z0-9-]*)`", starts.group(2))
    added = [n for n in re.findall(r"`([a-z][a-z0-9-]*)`", cluster.group(1)) if n != "cluster"]
    assert starts.group(1) == "four" and len(default) == 4
    assert {n for n, s in services.items() if not s.get("profiles")} == set(default)
    assert {n for n, s in services.items() if "cluster" in (s.get("profiles") or [])} == set(added)


def test_ports_are_published_on_loopback_only(services):
    ports = [(name, address, port) for name, s in services.items() for address, port in published(s)]
    assert len(ports) >= 8
    for name, address, port in ports:
        assert address == "127.0.0.1" and port, f"{name} publishes {port or 'a random port'} on {address or 'every interface'}"
    assert all(s.get("network_mode") != "host" for s in services.values())


@pytest.mark.parametrize("stack", STACKS)
def test_product_services_use_their_stacks_kafka_and_questdb(services, stack):
    brokers, product = STACKS[stack]
    for name in product:
        env = env_of(services[name])
        assert {host for host, _ in config.bootstrap_hosts(env["KAFKA_BOOTSTRAP_SERVERS"])} == set(brokers), name
        assert env["STORE_URL"] == "questdb://questdb" and "questdb" in services
        depends = services[name].get("depends_on") or {}
        assert set(brokers) | {"questdb"} <= set(depends), f"{name} must wait for its brokers and QuestDB"
        with mock.patch.dict(os.environ, {s.env: "" for s in config.SETTINGS}):
            os.environ.update({k: v for k, v in env.items() if "${" not in v})
            config.load()  # the product accepts what compose gives it
    if stack == "single":  # as docs/kafka-and-questdb.md says
        assert f"`KAFKA_BOOTSTRAP_SERVERS={env['KAFKA_BOOTSTRAP_SERVERS']}` and `STORE_URL={env['STORE_URL']}`" in COMPOSE_DOC


def test_cluster_profile_is_three_brokers_replication_3_min_isr_2(services):
    envs = [env_of(services[name]) for name in CLUSTER_BROKERS]
    voters = {f"{e['KAFKA_NODE_ID']}@{name}:9093" for name, e in zip(CLUSTER_BROKERS, envs, strict=True)}
    assert len(voters) == 3 and len({e["CLUSTER_ID"] for e in envs}) == 1
    for env in envs:
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    assert env_of(services["pipeline-cluster"])["REPLICATION_FACTOR"] == "3"


def test_product_services_set_only_settings_the_product_reads(services):
    documented = {s.env for s in config.SETTINGS}
    for name in STACKS["single"][1] + STACKS["cluster"][1]:
        unknown = set(env_of(services[name])) - documented
        assert not unknown, f"{name} sets variables pipeline/config.py does not read: {sorted(unknown)}"


def test_cluster_profile_runs_what_pipeline_servers_runs(services, tmp_path):
    """The failover tests' cluster (`pipeline.servers`, three KRaft nodes) is configured as the
    compose cluster profile is, in every setting replication and failover depend on."""
    from pipeline.servers import KafkaNode

    node = KafkaNode(1, 1, 2, {1: 2, 2: 3, 3: 4}, "cluster", 256, tmp_path)
    props = dict(line.split("=", 1) for line in node.properties.read_text().splitlines() if "=" in line)
    env = env_of(services["kafka-1"])
    for key in ("default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "transaction.state.log.min.isr", "broker.session.timeout.ms",
                "broker.heartbeat.interval.ms", "controller.quorum.fetch.timeout.ms", "controller.quorum.election.timeout.ms",
                "auto.create.topics.enable", "group.initial.rebalance.delay.ms"):
        assert env["KAFKA_" + key.upper().replace(".", "_")] == props[key], key
