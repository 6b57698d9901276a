"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

`docker-compose config` (Debian's docker-compose 1.29 in CI) validates the file against the
Compose schema and prints it normalized: anchors merged, `$${VAR:-}` interpolated, every service
(in 1.29, whatever its profile). The property tests read that output; without the executable
they read the file itself. YAML is parsed with PyYAML, which docker-compose 1.29 depends on:
if this interpreter cannot import it, docker-compose's own interpreter converts it to JSON, so
the tests add no dependency of their own.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKER_COMPOSE = shutil.which("docker-compose")

needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="the docker-compose executable is not installed (the CI test script installs Debian's docker-compose 1.29)",
)

SINGLE_BROKERS = ["kafka"]
CLUSTER_BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
SINGLE_PRODUCT = {"pipeline": "pipeline", "dashboard": "dashboard"}
CLUSTER_PRODUCT = {"pipeline": "pipeline-cluster", "dashboard": "dashboard-cluster"}


# ---------------------------------------------------------------- helpers


def run_compose(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    # COMPOSE_* variables of the caller (COMPOSE_PROFILES, COMPOSE_FILE...) must not change the result.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [DOCKER_COMPOSE, "-f", str(compose_file), *args],
        cwd=compose_file.parent, env=env, capture_output=True, text=True, timeout=120,
    )


def parse_yaml(text: str):
    """The parsed document, or None when no PyYAML is at hand."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        return yaml.safe_load(text)
    interpreter = _docker_compose_python()
    if interpreter is None:
        return None
    out = subprocess.run(
        [interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text, capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout)


def _docker_compose_python() -> str | None:
    if DOCKER_COMPOSE is None:
        return None
    with open(DOCKER_COMPOSE, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    if not first.startswith("#!") or "python" not in first:
        return None  # a binary build of docker-compose: no interpreter to borrow
    parts = first[2:].split()
    return shutil.which(parts[1]) if parts[0].endswith("/env") and len(parts) > 1 else parts[0]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def ports_of(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) of each published port, short or long syntax."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append((str(port.get("host_ip") or ""), str(port.get("published") or ""), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 3:
            result.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            result.append(("", parts[0], parts[1]))
        else:
            result.append(("", "", parts[0]))
    return result


def listeners(value: str) -> dict[str, tuple[str, str]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, address = item.strip().split("://", 1)
        host, _, port = address.rpartition(":")
        out[name] = (host, port)
    return out


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def healthcheck_test(service: dict) -> str:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    if check.get("disable") or not test:
        return ""
    return " ".join(test) if isinstance(test, list) else str(test)


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    """The configuration as Compose sees it (normalized), or the file itself without docker-compose."""
    if DOCKER_COMPOSE is None:
        parsed = parse_yaml(COMPOSE_FILE.read_text())
    else:
        result = run_compose("--profile", "cluster", "config")
        assert result.returncode == 0, result.stderr
        parsed = parse_yaml(result.stdout)
        if parsed is None:  # a Go build of Compose (v2) has no Python, but prints JSON
            result = run_compose("--profile", "cluster", "config", "--format", "json")
            parsed = json.loads(result.stdout) if result.returncode == 0 else None
    if parsed is None:
        pytest.skip("no YAML parser: PyYAML is importable neither here nor from docker-compose's interpreter")
    return parsed


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


# ---------------------------------------------------------------- validation by docker-compose


@needs_docker_compose
@pytest.mark.parametrize("profile_args", [(), ("--profile", "cluster")], ids=["default", "cluster"])
def test_docker_compose_validates_the_file(profile_args):
    result = run_compose(*profile_args, "config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


@needs_docker_compose
def test_validation_is_not_a_no_op(tmp_path):
    # The same file with an unknown service option must be rejected: `config -q` really validates.
    broken = COMPOSE_FILE.read_text().replace("\n  questdb:\n", "\n  questdb:\n    no_such_option: 1\n", 1)
    assert "no_such_option" in broken
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = run_compose("config", "-q", compose_file=path)
    assert result.returncode != 0
    assert "no_such_option" in result.stderr


# ---------------------------------------------------------------- properties


def test_profiles_split_single_node_and_cluster(services):
    default = {name for name, s in services.items() if not s.get("profiles")}
    cluster = {name for name, s in services.items() if "cluster" in (s.get("profiles") or [])}
    assert default == {"kafka", "questdb", *SINGLE_PRODUCT.values()}
    assert cluster == {*CLUSTER_BROKERS, *CLUSTER_PRODUCT.values()}
    assert set(services) == default | cluster


def test_images_are_pinned_to_a_version(services):
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: {image!r} is not pinned to x.y.z"
    kafka_images = {services[n]["image"] for n in SINGLE_BROKERS + CLUSTER_BROKERS}
    assert len(kafka_images) == 1 and kafka_images.pop().startswith("apache/kafka:")
    assert re.fullmatch(r"questdb/questdb:9\.\d+\.\d+", services["questdb"]["image"])


def test_every_published_port_is_bound_to_loopback(services):
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for host_ip, host_port, container_port in ports_of(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {container_port} on {host_ip or 'every interface'}"
            assert host_port, f"{name} publishes {container_port} on a random host port"
            published += 1
    assert published >= 8  # kafka, 3 cluster brokers, questdb x2, 2 dashboards


def test_host_ports_are_unique_where_services_run_together(services):
    # The single-node and cluster stacks are alternatives, but their brokers may run side by side.
    seen: dict[str, str] = {}
    for name in ["kafka", "questdb", *CLUSTER_BROKERS, "dashboard"]:
        for _, host_port, _ in ports_of(services[name]):
            assert host_port not in seen, f"{name} and {seen[host_port]} both publish {host_port}"
            seen[host_port] = name
    assert ports_of(services["dashboard-cluster"]) == ports_of(services["dashboard"])


def test_kafka_and_questdb_have_healthchecks(services):
    for name in SINGLE_BROKERS + CLUSTER_BROKERS:
        test = healthcheck_test(services[name])
        assert "kafka-broker-api-versions.sh" in test and "localhost:9092" in test, name
    test = healthcheck_test(services["questdb"])
    assert "/dev/tcp/127.0.0.1/9003" in test and "200" in test


def _volume_mounts(service: dict) -> list[str]:
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append(f"{volume.get('source', '')}:{volume['target']}")
        else:
            mounts.append(str(volume))
    return mounts


def _named_volume_at(service: dict, path: str, declared: dict) -> str | None:
    for mount in _volume_mounts(service):
        source, _, rest = mount.partition(":")
        target = rest.split(":")[0]
        if target == path and source in declared:
            return source
    return None


def test_every_broker_keeps_its_log_in_its_own_named_volume(compose, services):
    declared = compose.get("volumes") or {}
    sources = []
    for name in SINGLE_BROKERS + CLUSTER_BROKERS:
        log_dir = env_of(services[name])["KAFKA_LOG_DIRS"]
        source = _named_volume_at(services[name], log_dir, declared)
        assert source, f"{name}: no named volume at KAFKA_LOG_DIRS={log_dir}"
        sources.append(source)
    assert len(set(sources)) == len(sources)
    assert _named_volume_at(services["questdb"], "/var/lib/questdb", declared)


def test_questdb_publishes_the_ports_the_store_uses(services):
    # STORE_URL=questdb://HOST: ILP over HTTP and SQL on 9000 (also the web console), PG wire on 8812.
    assert {(h, p, c) for h, p, c in ports_of(services["questdb"])} == {
        ("127.0.0.1", "9000", "9000"), ("127.0.0.1", "8812", "8812")}


@pytest.mark.parametrize("name", SINGLE_BROKERS + CLUSTER_BROKERS)
def test_broker_listeners_reach_containers_by_name_and_the_host_on_loopback(services, name):
    env = env_of(services[name])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, combined node
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    inter_broker = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert set(bound) <= set(protocols) and controller in bound and controller not in advertised
    assert set(advertised) <= set(bound)
    # Containers: the inter-broker listener, advertised under the service name.
    assert advertised[inter_broker] == (name, bound[inter_broker][1])
    # Host: the other advertised listener is the published 127.0.0.1 port that leads to it.
    (external,) = set(advertised) - {inter_broker}
    host, host_port = advertised[external]
    assert host == "127.0.0.1"
    assert ("127.0.0.1", host_port, bound[external][1]) in ports_of(services[name])
    # The controller port stays inside the network.
    assert bound[controller][1] not in {c for _, _, c in ports_of(services[name])}


def test_single_node_kafka(services):
    env = env_of(services["kafka"])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert ("127.0.0.1", "9092") == listeners(env["KAFKA_ADVERTISED_LISTENERS"])["EXTERNAL"]
    for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS"):
        assert env[key] == "1", key


def test_cluster_profile_is_three_brokers_with_rf3_and_min_isr2(services):
    envs = [env_of(services[name]) for name in CLUSTER_BROKERS]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    assert envs[0]["CLUSTER_ID"] != env_of(services["kafka"])["CLUSTER_ID"]
    expected_voters = {f"{e['KAFKA_NODE_ID']}@{name}:9093" for name, e in zip(CLUSTER_BROKERS, envs)}
    for name, env in zip(CLUSTER_BROKERS, envs):
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == expected_voters, name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name


@pytest.mark.parametrize(
    "brokers, product", [(SINGLE_BROKERS, SINGLE_PRODUCT), (CLUSTER_BROKERS, CLUSTER_PRODUCT)], ids=["single", "cluster"]
)
def test_product_services_use_their_own_brokers_and_questdb(services, brokers, product):
    internal = {listeners(env_of(services[b])["KAFKA_ADVERTISED_LISTENERS"])["INTERNAL"] for b in brokers}
    for role, name in product.items():
        service = services[name]
        env = env_of(service)
        assert "build" in service and "image" not in service, name
        bootstrap = {tuple(a.rsplit(":", 1)) for a in env["KAFKA_BOOTSTRAP_SERVERS"].split(",")}
        assert bootstrap == internal, f"{name} bootstraps from {bootstrap}, brokers are {internal}"
        assert env["STORE_URL"] == "questdb://questdb"
        deps = depends_on(service)
        for dependency in [*brokers, "questdb"]:
            assert deps.get(dependency) == "service_healthy", f"{name} must wait for a healthy {dependency}"
        assert set(deps) <= {*brokers, "questdb", product["pipeline"]}, name
        if len(brokers) > 1:
            assert env.get("REPLICATION_FACTOR") == "3"
            assert (service.get("profiles") or []) == ["cluster"]
    pipeline = services[product["pipeline"]]
    assert command_of(pipeline)[-4:] == ["-m", "pipeline.run", "all", "--no-dashboard"]
    assert pipeline.get("hostname"), "device 0 is named after the hostname: a container id would change on every re-creation"
    dashboard = services[product["dashboard"]]
    assert command_of(dashboard)[-2:] == ["-m", "dash_app"]
    env = env_of(dashboard)
    assert env["DASH_HOST"] == "0.0.0.0"
    assert ports_of(dashboard) == [("127.0.0.1", "8050", env["DASH_PORT"])]
    assert "8050" in healthcheck_test(dashboard)


def test_product_environment_uses_documented_settings_only(services):
    documented = {s.env for s in SETTINGS}
    for name in [*SINGLE_PRODUCT.values(), *CLUSTER_PRODUCT.values()]:
        unknown = set(env_of(services[name])) - documented
        assert not unknown, f"{name} sets variables pipeline/config.py does not read: {sorted(unknown)}"


# ---------------------------------------------------------------- Dockerfile and .dockerignore


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_builds_a_non_root_image_of_the_product():
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    keywords = [k for k, _ in instructions]
    runs = [rest for k, rest in instructions if k == "RUN"]
    assert any(re.search(r"pip install .*-r requirements\.txt", r) for r in runs)
    copied = [rest.split()[0].rstrip("/") for k, rest in instructions if k == "COPY"]
    assert copied == ["requirements.txt", "pipeline", "dash_app", "assets"]
    assert "USER" in keywords
    user = [rest for k, rest in instructions if k == "USER"][-1]
    assert user not in {"root", "0"} and not user.startswith("0:")
    assert keywords.index("USER") < keywords.index("CMD")


def test_dockerignore_keeps_tests_and_data_out_of_the_build_context():
    lines = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"  # allow-list: everything else is excluded
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert allowed == {"requirements.txt", "pipeline", "dash_app", "assets"}
    copied = {rest.split()[0].rstrip("/") for k, rest in _instructions() if k == "COPY"}
    assert copied <= allowed
