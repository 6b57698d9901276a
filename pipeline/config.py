"""Every setting of the product, read from environment variables in one place (pydantic-settings).

Each field names its variable (the field name in capitals), its default, what it accepts and what
it means; docs/configuration.md lists the same (tests/test_config.py keeps the two in
step). A refused setting is one line naming the variable and what it accepts: `load()` raises
ConfigError, and the commands exit with code 2 (`load_or_exit`) before anything starts.
Command-line options of `pipeline.run` go through the same validation (`load(overrides)`), then
are written to the environment so that child processes see the same values.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.store.base import bucket_ms, range_bucket_ms

EXIT_CONFIG = 2  # the exit code of a refused setting (and of a port in use): not worth restarting
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_RUN_DIR = "data"


class ConfigError(ValueError):
    """A setting the product refuses; str() is the one line to show."""


def _setting(default: Any, accepts: str, help: str, **constraints: Any) -> Any:
    return Field(default, description=help, json_schema_extra={"accepts": accepts}, **constraints)


def _port(default: int, help: str) -> Any:
    return _setting(default, "a port, 1 to 65535", help, ge=1, le=65535)


def _count(default: int, help: str) -> Any:
    return _setting(default, "an integer ≥ 1", help, ge=1)


class Config(BaseSettings):
    """The product's settings, frozen. Fields are in the order docs/configuration.md shows them."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="ignore", str_strip_whitespace=True)

    kafka_bootstrap_servers: str = _setting(
        "", "empty, or HOST:PORT[,HOST:PORT...]",
        "Kafka brokers to use. Empty: the embedded broker on 127.0.0.1:BROKER_PORT (started by `run all` / `run broker`). "
        "Each host must resolve when a command starts.")
    kafka_client_config: str = _setting(
        "", "empty, or PROPERTY=VALUE[;PROPERTY=VALUE...]",
        "Extra librdkafka properties for every Kafka client of the product, e.g. "
        "`security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512;sasl.username=dash;sasl.password=...` (docs/security.md).")
    broker_port: int = _port(19092, "Port of the embedded broker.")
    broker_max_mb: int = _count(
        1024, "Memory of the embedded broker (it keeps every message) above which `run all` renews it: an empty broker starts "
        "beside it, producers switch to it, and the old one stops once its writers have stored what it holds.")
    broker_renew_mb: int = _count(
        64, "Growth of the embedded broker's memory since it started (held messages) after which `run all` renews it.")
    broker_renew_cpu: float = _setting(
        0.10, "a number > 0 and ≤ 2",
        "Cores of CPU the embedded broker may gain over its lowest 30 s average before `run all` renews it (it renews when "
        "its CPU has grown by this much and doubled, after 2 minutes).", gt=0, le=2, allow_inf_nan=False)
    broker_max_cpu: float = _setting(
        0.5, "a number > 0 and ≤ 2",
        "Cores of CPU (over 30 s) above which `run all` renews the embedded broker after 2 minutes, whatever its baseline: "
        "a broker busy from its start cannot double.", gt=0, le=2, allow_inf_nan=False)
    store_url: str = _setting(
        "sqlite:///data/dashboard.db",
        "`sqlite:///relative/path`, `sqlite:////absolute/path`, `questdb://HOST[:PORT]`, or a QuestDB client string "
        "`http::addr=HOST[:PORT];[KEY=VALUE;...]` or `https::addr=...;`",
        "Where readings are stored. SQLite: three slashes then a path relative to the working directory, four for an absolute "
        "path; its folder must exist, except `RUN_DIR`, which is created. QuestDB: writers send ILP over HTTP, "
        "`questdb://HOST[:PORT]` to PORT (9000) without TLS or login; a client string goes to QuestDB's `questdb` client as "
        "written (plus `auto_flush=off`, and `retry_timeout=5000` unless it sets one), e.g. `https::addr=db.example:9000;username=writer;password=...;tls_roots=/etc/ssl/qdb-ca.pem;` or "
        "`https::addr=db.example:9000;token=...;` (docs/security.md). Reads go over PG wire: see QUESTDB_PG_URL.")
    questdb_pg_url: str = _setting(
        "", "empty, or `postgresql://[USER[:PASSWORD]@][HOST][:PORT][/DATABASE][?PARAM=VALUE&...]`",
        "Where the QuestDB store is read and its tables are created (PG wire), with a QuestDB STORE_URL. Empty: STORE_URL's "
        "host, port 8812, user `admin`, password `quest`, database `qdb` (QuestDB's defaults); a part the URL leaves out "
        "takes the same default. Query parameters are libpq's, e.g. `?sslmode=verify-full&sslrootcert=/etc/ssl/qdb-ca.pem`; "
        "percent-encode `@`, `:` or `/` in a password.")
    rooms: int = _count(4, "Number of simulated rooms (temperature and humidity sensors).")
    devices: int = _count(3, "Number of devices reporting system usage; the first is this machine, the others are simulated.")
    rate: float = _setting(
        1, "a number > 0 and ≤ 1000",
        "Readings per second per sensor. At most 1000: `ts` is in milliseconds, and two readings of a sensor never share one.",
        gt=0, le=1000, allow_inf_nan=False)
    producer_linger_ms: int = _setting(
        100, "an integer ≥ 0",
        "Longest a producer waits to gather readings into one batch, when its sensors tick more often than that (slower "
        "ticks are sent at once). Longer: fewer, larger batches, and the embedded broker's CPU grows with the batches it "
        "answers and holds; shorter: less waiting at high rates.", ge=0)
    partitions: int = _count(3, "Partitions per topic when topic admin creates it.")
    replication_factor: int | None = _setting(
        None, "empty, or an integer ≥ 1", "Replication factor for new topics. Empty: min(3, number of brokers).", ge=1)
    writer_batch_size: int = _count(10000, "Most messages a store writer takes from Kafka per batch.")
    writer_flush_ms: int = _count(100, "Longest a store writer holds a batch before writing it and committing.")
    writer_max_poll_interval_ms: int = _setting(
        300000, "an integer ≥ 6000",
        "Longest a store writer may go between polls before its group drops it (Kafka's `max.poll.interval.ms`). Writers "
        "keep polling through store outages, so only tests change it.", ge=6000)
    dash_host: str = _setting("127.0.0.1", "a host name or address", "Address the dashboard listens on.", min_length=1)
    dash_allowed_hosts: str = _setting(
        "", "empty, `*`, or HOST[,HOST...]",
        "Host names the dashboard answers to besides 127.0.0.1, localhost and DASH_HOST (a page reached under another "
        "name gets 403: DNS rebinding cannot turn a foreign site into this one). `*`: any.")
    dash_port: int = _port(8050, "Port of the dashboard (page and live websocket); it must be free when the dashboard starts.")
    live_window_s: int = _count(300, "Width of the dashboard's live window, in seconds.")
    live_max_points: int = _count(2000, "Most points per series a history range returns before the store cuts it into buckets (each bucket's mean, min and max).")
    live_buckets: int = _count(
        600, "Horizontal resolution of a live chart, about one bucket per pixel column: the live window is cut into this many "
        "time buckets, and a series faster than one reading per bucket is drawn as each bucket's last reading over its lowest-to-highest envelope.")
    live_draw_budget_ms: int = _count(
        100, "Longest a live page may take to draw a frame, on average, before it asks for coarser buckets (half as many a "
        "step, up to 8 times fewer than LIVE_BUCKETS): where the browser lacks the CPU, resolution drops, not timeliness. "
        "It asks for finer ones again once drawing takes under a quarter of this.")
    live_max_pages: int = _count(
        50, "Most pages one dashboard process streams to at once (each holds a websocket and a server thread); "
        "a page over the limit is told so and retries.")
    alert_rules: str = _setting(
        "", "empty, or the path of a TOML file of `[[rules]]` (docs/alerts.md)",
        "The alert rules. Empty: the defaults, from the charts' bands (docs/alerts.md). A bad rule stops `run all` with one "
        "line naming the rule and what it accepts.")
    alert_webhook_url: str = _setting(
        "", "empty, or an `http://` or `https://` URL",
        "Where each change of an alert's state is POSTed as JSON (retried with back-off, never holding up the alerter; "
        "each failed attempt is logged and published to `alerts.dlq`, which the pipeline page lists among the dead letters). "
        "Empty: no webhook.")
    run_dir: str = _setting(
        DEFAULT_RUN_DIR, "a folder path", "Folder for the embedded broker's pidfile and the default SQLite database.", min_length=1)
    log_level: str = _setting("INFO", ", ".join(LOG_LEVELS), "Logging level of every daemon.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        if value:
            bootstrap_hosts(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("kafka_client_config")
    @classmethod
    def _client_config(cls, value: str) -> str:
        client_properties(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("questdb_pg_url")
    @classmethod
    def _questdb_pg_url(cls, value: str) -> str:
        if value:
            questdb_pg_params(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("alert_rules")
    @classmethod
    def _alert_rules(cls, value: str) -> str:
        from pipeline import rules

        rules.load(value)  # raises ValueError naming the bad rule and what it accepts
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_webhook_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("not an http:// or https:// URL with a host")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError("not a logging level")
        return value.upper()

    @property
    def dashboard_hosts(self) -> set[str] | None:
        """Host names (no port) the dashboard answers to; None: any."""
        names = {h.strip().lower() for h in self.dash_allowed_hosts.split(",") if h.strip()}
        if "*" in names:
            return None
        return names | {"127.0.0.1", "localhost", "::1", self.dash_host.lower()}

    @property
    def live_bucket_ms(self) -> int:
        """Width of a live bucket: the live window cut as a store cuts it into LIVE_BUCKETS + 1
        points, so a live history read with that many points comes in exactly these buckets."""
        return bucket_ms(0, self.live_window_s * 1000, self.live_buckets + 1)

    @property
    def live_levels(self) -> list[tuple[int, int]]:
        """The resolutions a live page draws at, finest first, as (points, bucket width): the live
        window cut into LIVE_BUCKETS buckets, then half, a quarter and an eighth as many, each
        width one that a store reading the window in that many points cuts exactly (under 10 s:
        range_bucket_ms rounds wider ones). The page takes a coarser one when drawing is slow."""
        window = self.live_window_s * 1000
        levels = [(self.live_buckets + 1, self.live_bucket_ms)]
        for fewer in (2, 4, 8):
            points = max(2, self.live_buckets // fewer) + 1
            width = bucket_ms(0, window, points)
            if width > levels[-1][1] and width == range_bucket_ms(0, window, points):
                levels.append((points, width))
        return levels

    @property
    def kafka_client_properties(self) -> dict[str, str]:
        return client_properties(self.kafka_client_config)

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"


def client_properties(text: str) -> dict[str, str]:
    """`a.b=1;c.d=x` -> {"a.b": "1", "c.d": "x"}; ValueError naming an entry without a value."""
    properties = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{item!r} is not PROPERTY=VALUE")
        properties[key.strip()] = value.strip()
    return properties


@dataclass(frozen=True)
class Setting:
    env: str
    default: str  # as written in the environment; "" is empty
    accepts: str
    help: str


# The documented variables, in the order docs/configuration.md shows them.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(name.upper(), "" if f.default is None else str(f.default), f.json_schema_extra["accepts"], f.description)
    for name, f in Config.model_fields.items()
)
_BY_ENV = {s.env: s for s in SETTINGS}


def bootstrap_hosts(servers: str) -> list[tuple[str, int]]:
    """(host, port) of each entry of a KAFKA_BOOTSTRAP_SERVERS list; ValueError on a malformed one."""
    result = []
    for entry in servers.split(","):
        entry = entry.strip()
        address = entry.split("://", 1)[1] if "://" in entry else entry  # librdkafka accepts PLAINTEXT://host:port
        host, sep, port = address.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() or c in "/[]" for c in host):
            raise ValueError(f"{entry!r} is not HOST:PORT" if entry else "an entry is empty")
        result.append((host, int(port)))
    return result


def store_url_problem(url: str, run_dir: str = DEFAULT_RUN_DIR) -> str | None:
    """What is wrong with a STORE_URL, or None. One function per scheme: add a form here."""
    for sep in ("://", "::"):  # URLs, then QuestDB client strings (SERVICE::KEY=VALUE;...)
        scheme, found, rest = url.partition(sep)
        check = _STORE_CHECKS.get(scheme + sep) if found else None
        if check is not None:
            return check(url, rest, run_dir)
    return "unknown kind of store"


def _sqlite_problem(url: str, rest: str, run_dir: str) -> str | None:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    if not rest.startswith("/") or not rest[1:] or rest.endswith("/"):
        return "names no file"
    path = Path(rest[1:])
    folder = path.parent
    if folder.is_dir() or folder.resolve() == Path(run_dir).resolve():
        return None
    return f"folder {str(folder)!r} does not exist (create it; only RUN_DIR is created)"


def _questdb_problem(url: str, rest: str, run_dir: str) -> str | None:
    if "@" in rest:
        return "questdb:// takes no login: write it in a client string, e.g. https::addr=HOST:9000;username=...;password=...;"
    return _host_port_problem(rest.rstrip("/"))


def _host_port_problem(address: str) -> str | None:
    host, port = split_host_port(address)
    if not host or any(c.isspace() or c in "/@;" for c in host):
        return "names no host"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "port is not 1 to 65535"
    return None


def split_host_port(address: str) -> tuple[str, str | None]:
    """`host:9000` -> ("host", "9000"), `host` -> ("host", None), `[::1]:9000` -> ("::1", "9000")."""
    if address.startswith("[") and "]" in address:  # [IPv6]
        host, _, tail = address[1:].partition("]")
        return host, tail[1:] if tail.startswith(":") else (None if not tail else tail)
    host, sep, port = address.rpartition(":")
    return (host, port) if sep else (address, None)


# QuestDB client configuration strings (the `questdb` package's Sender.from_conf): SERVICE::KEY=VALUE;...
# with `;;` for a `;` inside a value. The keys ILP over HTTP(S) takes; auto_flush* are the writers' own
# (they flush each batch before committing it), so a string may not set them.
QUESTDB_CONF_KEYS = frozenset({
    "addr", "username", "password", "token", "auth_timeout", "tls_verify", "tls_ca", "tls_roots", "tls_roots_password",
    "max_buf_size", "retry_timeout", "retry_max_backoff_millis", "request_min_throughput", "request_timeout",
    "protocol_version", "init_buf_size", "max_name_len", "bind_interface",
})
QUESTDB_OWN_KEYS = {"auto_flush": "off", "retry_timeout": "5000"}  # what the store adds (retry_timeout: unless given)


def questdb_conf(text: str) -> tuple[str, dict[str, str]]:
    """`http::addr=h:9000;username=u;` -> ("http", {"addr": "h:9000", "username": "u"}); ValueError if malformed."""
    service, sep, rest = text.partition("::")
    if not sep or not service:
        raise ValueError("is not SERVICE::KEY=VALUE;...")
    items, item, i = [], [], 0
    while i < len(rest):
        if rest.startswith(";;", i):  # an escaped `;` inside a value
            item.append(";")
            i += 2
            continue
        if rest[i] == ";":
            items.append("".join(item))
            item = []
        else:
            item.append(rest[i])
        i += 1
    if item:
        items.append("".join(item))
    params: dict[str, str] = {}
    for entry in items:
        key, eq, value = entry.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{entry!r} is not KEY=VALUE" if entry else "an entry is empty (one `;` too many?)")
        if key in params:
            raise ValueError(f"{key} is given twice")
        params[key] = value
    return service, params


def _questdb_conf_problem(url: str, rest: str, run_dir: str) -> str | None:
    try:
        _, params = questdb_conf(url)
    except ValueError as exc:
        return str(exc)
    if "addr" not in params:
        return "names no addr=HOST[:PORT]"
    own = sorted(k for k in params if k.startswith("auto_flush"))
    if own:
        return f"{own[0]} is the writers' own (they flush each batch before committing it): leave it out"
    unknown = sorted(set(params) - QUESTDB_CONF_KEYS)
    if unknown:
        return f"unknown key {unknown[0]!r} for ILP over HTTP"
    problem = _host_port_problem(params["addr"])
    if problem:
        return f"addr {problem}"
    if ("username" in params) != ("password" in params):
        return "username and password go together"
    if "token" in params and "username" in params:
        return "a token or a username and password, not both"
    try:  # the client's own verdict (tls_verify values, certificate files...); it connects nowhere yet
        from questdb import QuestDBError, Sender

        Sender.from_conf(url).close()
    except (QuestDBError, ValueError, TypeError) as exc:
        return f"the questdb client refuses it: {exc}"
    return None


def _questdb_transport_problem(url: str, rest: str, run_dir: str) -> str | None:
    return ("the writers need ILP over HTTP, which reports each batch's errors (TCP and UDP do not; ws:: needs "
            "QuestDB 10): use http:: or https::")


def questdb_pg_params(url: str) -> dict[str, str]:
    """The libpq parameters a QUESTDB_PG_URL gives (only those it gives); ValueError if malformed."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("is not a postgresql:// URL")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise ValueError(str(exc).strip()) from None
    port = params.get("port")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("port is not 1 to 65535")
    if any(c.isspace() for c in params.get("host", "")):
        raise ValueError("names no host")
    return params


_STORE_CHECKS = {
    "sqlite://": _sqlite_problem, "questdb://": _questdb_problem,
    "http::": _questdb_conf_problem, "https::": _questdb_conf_problem,
    **{f"{s}::": _questdb_transport_problem for s in ("tcp", "tcps", "udp", "ws", "wss")},
}
_SECRET = re.compile(r"((?:password|token|tls_roots_password)=)((?:[^;]|;;)*)|(://[^:/@]*:)([^@]*)(@)", re.IGNORECASE)


def redact(value: str) -> str:
    """A STORE_URL or QUESTDB_PG_URL with its passwords and tokens replaced by `***`, for messages."""
    return _SECRET.sub(lambda m: f"{m[1]}***" if m[1] else f"{m[3]}***{m[5]}", value)


def _describe(env: str, value: Any, problem: str | None, flags: dict[str, str], expected: str | None = None) -> str:
    name = f"{flags[env]} (env {env})" if env in flags else env
    why = f": {problem};" if problem else ":"
    shown = redact(str(value)) if env in ("STORE_URL", "QUESTDB_PG_URL") else str(value)
    if problem and "; expected " in problem:  # the problem says what is accepted (a bad alert rule)
        return f"{name}={shown!r} refused: {problem}"
    return f"{name}={shown!r} refused{why} expected {expected or _BY_ENV[env].accepts}"


def load(overrides: dict[str, str] | None = None, *, flags: dict[str, str] | None = None) -> Config:
    """The configuration from the environment, with `overrides` (by variable name) on top.

    Raises ConfigError with one line naming every refused variable and what it accepts.
    `flags` names the command-line option an override came from, for the message.
    """
    overrides = {env: value for env, value in (overrides or {}).items() if value is not None}
    flags = flags or {}
    try:
        cfg = Config(**{env.lower(): value for env, value in overrides.items()})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            env = str(error["loc"][0]).upper()
            value = overrides.get(env, os.environ.get(env, error.get("input")))
            problem = str(error["ctx"]["error"]) if error["type"] == "value_error" else None  # else: out of range
            problems.append(_describe(env, value, problem, flags))
        raise ConfigError("; ".join(problems)) from None
    problem = store_url_problem(cfg.store_url, cfg.run_dir)
    if problem:
        raise ConfigError(_describe("STORE_URL", cfg.store_url, problem, flags))
    return cfg


def fail(message: str) -> None:
    """Exit before anything starts: one line on stderr, code 2 (a supervisor must not restart it)."""
    print(f"configuration error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


def load_or_exit(overrides: dict[str, str] | None = None, *, flags: dict[str, str] | None = None) -> Config:
    try:
        return load(overrides, flags=flags)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


# ---------------------------------------------------------------- startup checks


def check_bootstrap_resolves(cfg: Config, timeout: float = 2.0) -> None:
    """ConfigError unless every KAFKA_BOOTSTRAP_SERVERS host resolves within `timeout` seconds.

    librdkafka would retry an unknown host quietly for ever; this says so at once.
    """
    if cfg.embedded_broker:
        return
    hosts = sorted({host for host, _ in bootstrap_hosts(cfg.kafka_bootstrap_servers)})
    results: dict[str, str | None] = {}

    def resolve(host: str) -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            results[host] = None
        except OSError as exc:
            results[host] = exc.strerror or str(exc)

    threads = [threading.Thread(target=resolve, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for host in hosts:
        if host not in results:
            problem = f"host {host!r} did not resolve within {timeout:.0f} s"
        elif results[host] is not None:
            problem = f"host {host!r} does not resolve ({results[host]})"
        else:
            continue
        raise ConfigError(_describe("KAFKA_BOOTSTRAP_SERVERS", cfg.kafka_bootstrap_servers, problem, {}, "hosts that resolve"))


def check_port_free(host: str, port: int, env: str, host_env: str) -> None:
    """ConfigError if nothing can listen on host:port (taken, or an address not of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(_describe(host_env, host, f"cannot listen there ({exc.strerror or exc})", {})) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(_describe(env, port, f"{host}:{port} is already in use", {}, "a free port")) from None
            raise ConfigError(_describe(host_env, host, f"cannot listen on {host}:{port} ({exc.strerror})", {},
                                        "an address of this machine")) from None
