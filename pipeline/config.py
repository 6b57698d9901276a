"""Every setting of the product, read from environment variables in one place.

Each field names its variable and default; the README's configuration table lists the same
(tests/test_config.py keeps the two in step). Command-line options of `pipeline.run` write
these variables before any daemon starts, so child processes see the same values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


# The documented variables, in the order the README shows them.
SETTINGS: tuple[Setting, ...] = (
    Setting("KAFKA_BOOTSTRAP_SERVERS", "", "Kafka brokers to use. Empty: the embedded broker on 127.0.0.1:BROKER_PORT (started by `run all` / `run broker`)."),
    Setting("BROKER_PORT", "19092", "Port of the embedded broker."),
    Setting("BROKER_MAX_MB", "1024", "Memory of the embedded broker (it keeps every message) above which `run all` drains the writers and starts it afresh."),
    Setting("STORE_URL", "sqlite:///data/dashboard.db", "Where readings are stored: `sqlite:///PATH` or `questdb://HOST` (ILP/HTTP on 9000, PG wire on 8812)."),
    Setting("ROOMS", "4", "Number of simulated rooms (temperature and humidity sensors)."),
    Setting("DEVICES", "3", "Number of devices reporting system usage; the first is this machine, the others are simulated."),
    Setting("RATE", "1", "Readings per second per sensor."),
    Setting("PRODUCER_LINGER_MS", "20", "Longest a producer waits to gather readings into one batch. Shorter: lower latency at low rates; longer: fewer, larger batches (the embedded broker's CPU grows with the number of batches it holds)."),
    Setting("PARTITIONS", "3", "Partitions per topic when topic admin creates it."),
    Setting("REPLICATION_FACTOR", "", "Replication factor for new topics. Empty: min(3, number of brokers)."),
    Setting("WRITER_BATCH_SIZE", "5000", "Most messages a store writer takes from Kafka per batch."),
    Setting("WRITER_FLUSH_MS", "250", "Longest a store writer holds a batch before writing it and committing."),
    Setting("DASH_HOST", "127.0.0.1", "Address the dashboard listens on."),
    Setting("DASH_PORT", "8050", "Port of the dashboard (page and live websocket)."),
    Setting("LIVE_WINDOW_S", "300", "Width of the dashboard's live window, in seconds."),
    Setting("LIVE_MAX_POINTS", "2000", "Most points per series a history range returns before the store averages it into buckets."),
    Setting("LIVE_BUCKETS", "600", "Horizontal resolution of a live chart, about one bucket per pixel column: the live window is cut into this many time buckets, and a series faster than one reading per bucket is drawn as each bucket's lowest, highest and last reading."),
    Setting("RUN_DIR", "data", "Folder for the embedded broker's pidfile and the default SQLite database."),
    Setting("LOG_LEVEL", "INFO", "Logging level of every daemon."),
)


@dataclass(frozen=True)
class Config:
    kafka_bootstrap_servers: str
    broker_port: int
    broker_max_mb: int
    store_url: str
    rooms: int
    devices: int
    rate: float
    producer_linger_ms: int
    partitions: int
    replication_factor: int | None
    writer_batch_size: int
    writer_flush_ms: int
    dash_host: str
    dash_port: int
    live_window_s: int
    live_max_points: int
    live_buckets: int
    run_dir: str
    log_level: str
    embedded_broker: bool = field(default=False)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"


def load() -> Config:
    """Read the configuration from the environment; a malformed number is a clear error."""
    raw = {s.env: _env(s.env, s.default) for s in SETTINGS}
    converters = {f.name: f.type for f in fields(Config)}
    values: dict[str, object] = {}
    for env, text in raw.items():
        name = env.lower()
        kind = converters[name]
        try:
            if kind == "int":
                values[name] = int(text)
            elif kind == "float":
                values[name] = float(text)
            elif kind == "int | None":
                values[name] = int(text) if text else None
            else:
                values[name] = text
        except ValueError:
            raise SystemExit(f"configuration error: {env}={text!r} is not a valid {kind}") from None
    values["embedded_broker"] = not raw["KAFKA_BOOTSTRAP_SERVERS"]
    return Config(**values)
