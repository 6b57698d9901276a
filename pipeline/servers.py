"""Apache Kafka and QuestDB without Docker: the servers docker-compose.yml runs, as local JVMs.

`pom.xml` beside this module pins them at docker-compose.yml's versions; Maven resolves them once
into its local cache (~/.m2) and the classpath is kept under ~/.cache/sensor-dashboard. Each
server listens on free 127.0.0.1 ports, keeps its data in a temporary folder (removed when it
stops), counts as started once it answers its clients, and is killed by the kernel if the
process that started it dies, even by SIGKILL (`daemon.dies_with_us`): start servers from the
main thread, which the kernel takes for their parent.

    python -m pipeline.servers kafka questdb   # runs until Ctrl-C, printing the settings to use

From Python (tests, benchmarks): `with Kafka() as kafka, QuestDB() as qdb: ...`, and `Cluster()`:
three KRaft nodes, each of which can be killed, stopped and started again by its id.
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Self

from pipeline.broker import free_port
from pipeline.daemon import Stop, dies_with_us, stop_event

POM = Path(__file__).with_name("pom.xml")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensor-dashboard"
JAVA_MIN = 17  # Kafka 4 brokers need Java 17
READY_TIMEOUT_S = 90.0  # a JVM on two busy cores: Kafka answered in ~3 s here, QuestDB in ~7 s
STOP_TIMEOUT_S = 30.0
# Kafka logs through log4j2; without a configuration it would print errors only.
LOG4J2 = """rootLogger.level=INFO
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
"""


class ServersUnavailable(RuntimeError):
    """Java or Maven is missing, or the servers could not be resolved or started: str() says which."""


# ---- Java and Maven ------------------------------------------------------------------------


@functools.cache
def java() -> str:
    """The java executable (JAVA_HOME's, else PATH's), checked to be version JAVA_MIN or later."""
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not exe:
        raise ServersUnavailable(f"Java {JAVA_MIN}+ is missing: no `java` on PATH or in JAVA_HOME (Debian: apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)', out)
    if not found or int(found[1]) < JAVA_MIN:
        raise ServersUnavailable(f"Java {JAVA_MIN}+ is needed, {exe} is {out.splitlines()[0] if out else 'unknown'}")
    return exe


def classpath() -> list[str]:
    """The servers' jars, resolved by Maven from pom.xml once (into ~/.m2) and cached per pom."""
    cached = CACHE / f"classpath-{hashlib.sha256(POM.read_bytes()).hexdigest()[:16]}.txt"
    if cached.exists():
        jars = cached.read_text().strip().split(os.pathsep)
        if all(Path(j).exists() for j in jars):
            return jars
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServersUnavailable("Maven is missing: no `mvn` on PATH (Debian: apt-get install maven)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")  # another process may resolve at the same time
    done = subprocess.run(
        [mvn, "-B", "-q", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={partial}"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0 or not partial.exists():
        out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # Maven colours some lines whatever it is told
        errors = [line for line in out.splitlines() if line.startswith("[ERROR] ") and line[8:].strip()]
        errors = errors or done.stderr.splitlines() or [f"mvn exited with {done.returncode}"]
        raise ServersUnavailable(f"Maven could not resolve the servers of {POM}: {errors[0]}")
    partial.replace(cached)
    return cached.read_text().strip().split(os.pathsep)


# ---- one server process ----------------------------------------------------------------------


class _Managed:
    """`with server:` starts it and waits until it answers (stopping it if that fails); leaving stops it."""

    def __enter__(self) -> Self:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


class JavaServer(_Managed):
    """One JVM server: its folder (data and log), started, ready once it answers, stopped."""

    name = "server"
    main = ""

    def __init__(self, heap_mb: int, folder: Path | None = None):
        self.heap_mb = heap_mb
        self.folder = folder or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "server.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0  # from start() to ready: what a test session pays per server

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def jars(self, jars: list[str]) -> list[str]:
        """The jars this server needs of the resolved classpath."""
        return jars

    def jvm_options(self) -> list[str]:
        return []

    def args(self) -> list[str]:
        return []

    def env(self) -> dict[str, str]:
        return {}

    def answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process (not waiting for it to answer: see wait_ready)."""
        exe, jars = java(), classpath()
        self._started = time.monotonic()
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [exe, f"-Xmx{self.heap_mb}m", "-Xms32m", "-XX:+UseSerialGC", *self.jvm_options(), "-cp", os.pathsep.join(self.jars(jars)), self.main, *self.args()],
                cwd=self.folder, env={**os.environ, **self.env()}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=dies_with_us(),  # noqa: PLW1509 - see daemon.dies_with_us
                start_new_session=True,  # a Ctrl-C in the terminal reaches only us: we stop it in order
            )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, stop: Stop | None = None) -> Self:
        """Wait until it answers; ServersUnavailable if it exits, does not answer in time, or `stop` is set."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServersUnavailable(f"{self.name} exited with {self.proc.returncode} while starting; its log ends:\n{self.log_tail()}")
            try:
                if self.answers():
                    break
            except Exception:  # noqa: BLE001, S110 - not listening yet, or not yet serving: not yet
                pass
            if time.monotonic() > deadline:
                raise ServersUnavailable(f"{self.name} did not answer within {timeout:.0f} s; its log ends:\n{self.log_tail()}")
            if stop is None:
                time.sleep(0.1)
            elif stop.wait(0.1):
                raise ServersUnavailable(f"{self.name}: stopped while starting")
        self.startup_s = time.monotonic() - self._started
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the server's own clean shutdown), SIGKILL after `timeout` s; its exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---- Apache Kafka ----------------------------------------------------------------------------


def cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as `kafka-storage.sh random-uuid` makes
    (it may start with "-": pass it as --cluster-id=ID)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


class KafkaNode(JavaServer):
    """One KRaft node, broker and controller in one process (as docker-compose.yml's nodes).

    Its storage is formatted once, before its first start, for a static quorum of `voters`
    (node id -> controller port); a restart keeps its data, id and ports."""

    name = "kafka"
    main = "kafka.Kafka"

    def __init__(self, node_id: int, port: int, controller_port: int, voters: dict[int, int], cluster: str, heap_mb: int, folder: Path):
        super().__init__(heap_mb, folder)
        self.node_id, self.port, self.controller_port, self.voters, self.cluster = node_id, port, controller_port, voters, cluster
        self.expected_brokers = len(voters)
        replicas, isr = (1, 1) if len(voters) == 1 else (3, 2)  # docker-compose.yml's
        self.properties = self.folder / "server.properties"
        self.properties.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={node_id}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"controller.quorum.voters={','.join(f'{n}@127.0.0.1:{p}' for n, p in voters.items())}",
            f"log.dirs={self.folder / 'data'}",
            "auto.create.topics.enable=false",  # topics come from pipeline.admin, never by accident
            "group.initial.rebalance.delay.ms=0",
            # Group offsets in 5 partitions, not Kafka's 50: creating 50 (at the first group
            # lookup) took ~60 s on two busy cores; this product has a handful of groups.
            "offsets.topic.num.partitions=5",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={replicas}",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={isr}",
            # A broker that stops heartbeating is fenced after this long: the partitions it led get
            # new leaders and it leaves every in-sync set. Until then every write waits for it
            # (acks=all, and it is in every in-sync set) and so does every group whose coordinator
            # it was: 2 s instead of Kafka's 9 s. A dead active controller is replaced after the
            # quorum's fetch and election timeouts (Kafka's 2 s and 1 s) before the new one can
            # fence anything. docker-compose.yml's cluster sets the same.
            *(["broker.session.timeout.ms=2000", "broker.heartbeat.interval.ms=500",
               "controller.quorum.fetch.timeout.ms=1000", "controller.quorum.election.timeout.ms=500"] if len(voters) > 1 else []),
            "",
        ]))
        (self.folder / "log4j2.properties").write_text(LOG4J2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def jars(self, jars: list[str]) -> list[str]:
        return [j for j in jars if "/org/questdb/" not in j]

    def format(self) -> subprocess.Popen:
        """Format this node's storage (`kafka-storage.sh format`), once, before its first start."""
        jars = os.pathsep.join(self.jars(classpath()))
        return subprocess.Popen(
            [java(), "-Xmx128m", "-cp", jars, "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster}", f"--config={self.properties}"],
            cwd=self.folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=dies_with_us(),  # noqa: PLW1509 - see daemon.dies_with_us
        )

    def jvm_options(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.folder / 'log4j2.properties'}"]

    def args(self) -> list[str]:
        return [str(self.properties)]

    def answers(self) -> bool:
        """This node sees every broker of its cluster registered, and consumer groups are served
        (the first group lookup creates __consumer_offsets: a test's first writer would wait for it)."""
        admin = _admin(self.address)  # held: a client collected while its request is out cancels it
        found = admin.describe_cluster(request_timeout=2).result()
        if found.cluster_id != self.cluster or len(found.nodes) != self.expected_brokers:
            return False
        admin.describe_consumer_groups(["pipeline.servers-ready"], request_timeout=5)["pipeline.servers-ready"].result()
        return True


class Kafka(_Managed):
    """Apache Kafka in KRaft mode on 127.0.0.1: `size` nodes, each broker and controller.

    `bootstrap` is the KAFKA_BOOTSTRAP_SERVERS to give the product. Nodes are kept by id (1..size)
    in `nodes`: `kill(id)` (SIGKILL, or another signal), `stop(id)` (clean) and `start(id)` again
    (same data, same ports) for the failover tests."""

    def __init__(self, size: int = 1, heap_mb: int | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="kafka-"))
        self.cluster = cluster_id()
        ids = range(1, size + 1)
        ports = {n: (free_port(), free_port()) for n in ids}
        voters = {n: ports[n][1] for n in ids}
        heap = heap_mb or (512 if size == 1 else 256)  # three JVMs share the machine's memory and two cores
        self.nodes = {
            n: KafkaNode(n, ports[n][0], ports[n][1], voters, self.cluster, heap, self.folder / f"node-{n}") for n in ids
        }
        self.formatted = False
        self.startup_s = 0.0

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes.values())

    def start(self) -> Self:
        """Start every node (formatting its storage first); wait_ready() waits for them."""
        self._started = time.monotonic()
        if not self.formatted:
            formats = {n: node.format() for n, node in self.nodes.items()}  # one JVM each, side by side
            for n, proc in formats.items():
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise ServersUnavailable(f"formatting Kafka node {n}'s storage failed: {out.strip()[-500:]}")
            self.formatted = True
        for node in self.nodes.values():
            node.start()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, stop: Stop | None = None) -> Self:
        for node in self.nodes.values():
            node.wait_ready(timeout, stop)
        self.startup_s = time.monotonic() - self._started
        return self

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one node (SIGKILL: a crash; SIGSTOP/SIGCONT: a freeze) without waiting."""
        self.nodes[node_id].signal(sig)

    def stop(self, node_id: int) -> int | None:
        """Stop one node cleanly (SIGTERM) and wait for it; its exit code."""
        return self.nodes[node_id].stop()

    def restart(self, node_id: int, timeout: float = READY_TIMEOUT_S) -> None:
        """Start a stopped or killed node again, with its data and ports, and wait until it answers."""
        node = self.nodes[node_id]
        if node.proc and node.proc.poll() is None:
            raise RuntimeError(f"Kafka node {node_id} is running (pid {node.pid}): kill or stop it first")
        node.start().wait_ready(timeout)

    def reset(self, timeout: float = 30.0) -> None:
        """Delete every topic but Kafka's own and every consumer group: a clean broker for the next test."""
        admin = _admin(self.bootstrap)
        groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=10).result().valid]
        if groups:
            for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
                future.exception()  # a group with members left (a killed client's, until its session ends): its offsets go with its topics
        topics = [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=timeout).values():
                future.result()
        deadline = time.monotonic() + timeout
        # Deletion completes in the background: a topic created again too early would fail.
        while set(topics) & set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise ServersUnavailable(f"Kafka did not delete topics {topics} within {timeout:.0f} s")
            time.sleep(0.05)

    def busiest_leader(self, topics) -> int:
        """The node that leads the most partitions of `topics` (the one whose loss moves the most)."""
        md = _admin(self.bootstrap).list_topics(timeout=10)
        leads = [pm.leader for t in topics for pm in md.topics[t].partitions.values()]
        return max(sorted(set(leads)), key=leads.count)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"-- kafka node {n} --\n{node.log_tail(chars // len(self.nodes))}" for n, node in self.nodes.items())

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---- QuestDB ---------------------------------------------------------------------------------


class QuestDB(JavaServer):
    """QuestDB's server (`io.questdb.ServerMain -d <folder>`) with HTTP (ILP and the console), PG
    wire and ILP/TCP on free ports, set by its QDB_* environment variables (server.conf keys)."""

    name = "questdb"
    main = "io.questdb.ServerMain"

    def __init__(self, heap_mb: int = 512):
        super().__init__(heap_mb)
        self.http_port, self.pg_port, self.ilp_port = free_port(), free_port(), free_port()

    @property
    def store_url(self) -> str:
        """STORE_URL for the product: ILP over HTTP."""
        return f"questdb://127.0.0.1:{self.http_port}"

    @property
    def pg_url(self) -> str:
        """QUESTDB_PG_URL for the product: reads and DDL over PG wire (QuestDB's default login)."""
        return f"postgresql://127.0.0.1:{self.pg_port}"

    def jars(self, jars: list[str]) -> list[str]:
        return [j for j in jars if "/org/questdb/" in j]

    def args(self) -> list[str]:
        return ["-d", str(self.folder)]

    def env(self) -> dict[str, str]:
        return {
            "QDB_HTTP_BIND_TO": f"127.0.0.1:{self.http_port}",
            "QDB_PG_NET_BIND_TO": f"127.0.0.1:{self.pg_port}",
            "QDB_LINE_TCP_NET_BIND_TO": f"127.0.0.1:{self.ilp_port}",
            "QDB_HTTP_MIN_ENABLED": "false",  # its health port (9003) is fixed: two servers would clash
            "QDB_LINE_UDP_ENABLED": "false",  # the same for ILP over UDP (9009)
            "QDB_TELEMETRY_ENABLED": "false",
        }

    def answers(self) -> bool:
        """Both the HTTP endpoint (ILP) and PG wire (reads) answer a query."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/exec?query=SELECT%201", timeout=2) as reply:
            if reply.status != 200:
                return False
        import psycopg

        with psycopg.connect(self.pg_url, user="admin", password="quest", dbname="qdb", connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def reset(self) -> None:
        """Drop every table: an empty database for the next test."""
        import psycopg

        with psycopg.connect(self.pg_url, user="admin", password="quest", dbname="qdb", autocommit=True) as conn:
            conn.execute("DROP ALL TABLES")


# ---- the command -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.servers", description=__doc__.split("\n\n")[0])
    p.add_argument("servers", nargs="+", choices=["kafka", "cluster", "questdb", "resolve"],
                   help="kafka: one KRaft node; cluster: three; questdb: QuestDB; resolve: only fetch them with Maven and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop = stop_event("servers")  # Ctrl-C or SIGTERM: the servers stop, and their data goes with them
    servers: list = []
    try:
        java()
        jars = classpath()
        if args.servers == ["resolve"]:
            print(f"{len(jars)} jars resolved ({POM})")
            return 0
        for name in dict.fromkeys(args.servers):
            servers.append(QuestDB() if name == "questdb" else Kafka(3 if name == "cluster" else 1))
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(stop=stop)
        for server in servers:
            if isinstance(server, Kafka):
                print(f"Apache Kafka ({len(server.nodes)} node{'s' * (len(server.nodes) > 1)}, pids "
                      f"{', '.join(str(n.pid) for n in server.nodes.values())}) ready in {server.startup_s:.1f} s")
                print(f"  KAFKA_BOOTSTRAP_SERVERS={server.bootstrap}" + ("  REPLICATION_FACTOR=3" if len(server.nodes) > 1 else ""))
            else:
                print(f"QuestDB (pid {server.pid}) ready in {server.startup_s:.1f} s; console http://127.0.0.1:{server.http_port}")
                print(f"  STORE_URL={server.store_url}  QUESTDB_PG_URL={server.pg_url}")
        print("Ctrl-C stops them (their data goes with them).", flush=True)
        stop.wait()
    except ServersUnavailable as exc:
        if not stop.is_set():
            print(f"servers: {exc}", file=sys.stderr)
            return 1
    finally:
        for server in reversed(servers):
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
