"""Settings: one place, documented in docs/configuration.md, and a bad one refused before anything starts."""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import config
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = (ROOT / "docs" / "configuration.md").read_text()
TABLE_ROW = re.compile(r"^\| `([A-Z_]+)` \| (.*?) \| (.*?) \| (.*?) \|$", re.MULTILINE)


def documented_rows() -> dict[str, tuple[str, str, str]]:
    return {m.group(1): m.groups()[1:] for m in TABLE_ROW.finditer(SETTINGS_DOC)}


def test_the_settings_table_is_the_settings():
    rows = documented_rows()
    assert list(rows) == [s.env for s in config.SETTINGS]
    for s in config.SETTINGS:
        default, accepts, meaning = rows[s.env]
        assert default == (f"`{s.default}`" if s.default else "empty"), s.env
        assert (accepts, meaning) == (s.accepts, s.help), f"docs/configuration.md row of {s.env} differs from pipeline/config.py"


def test_defaults(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    cfg = config.load()
    assert cfg.embedded_broker and cfg.bootstrap_servers == "127.0.0.1:19092"
    assert cfg.store_url == "sqlite:///data/dashboard.db" and cfg.partitions == 3 and cfg.replication_factor is None
    assert cfg.rate == 1.0 and cfg.live_buckets == 600 and cfg.log_level == "INFO"
    with pytest.raises(ValueError):
        cfg.rooms = 5  # frozen
    monkeypatch.setenv("ROOMS", "")  # empty means the default
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert config.load().rooms == 4 and config.load().log_level == "DEBUG"


def test_setting_kafka_means_no_embedded_broker(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092, kafka-2:9092,[::1]:9092")
    cfg = config.load()
    assert not cfg.embedded_broker and cfg.bootstrap_servers == "kafka-1:9092, kafka-2:9092,[::1]:9092"
    assert config.bootstrap_hosts(cfg.kafka_bootstrap_servers) == [("kafka-1", 9092), ("kafka-2", 9092), ("::1", 9092)]


@pytest.mark.parametrize("url", [
    "sqlite:///data/dashboard.db", "sqlite:///dashboard.db", "sqlite:////tmp/x.db", "questdb://questdb", "questdb://127.0.0.1:9000",
    "http::addr=questdb:9000;", "https::addr=db.example:9000;username=w;password=p;;q;tls_verify=unsafe_off;", "https::addr=db;token=t;",
])
def test_store_urls_accepted(url):
    assert config.store_url_problem(url) is None


def test_store_url_in_a_missing_folder_is_accepted_only_as_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    assert config.store_url_problem(f"sqlite:///{run_dir}/x.db", str(run_dir)) is None
    assert "does not exist" in config.store_url_problem(f"sqlite:///{tmp_path}/missing/x.db", str(run_dir))


def test_command_line_options_are_validated_like_their_variable():
    with pytest.raises(config.ConfigError, match=r"^--rate \(env RATE\)='0' refused"):
        config.load({"RATE": "0"}, flags={"RATE": "--rate"})


# ---------------------------------------------------------------- the real commands


# (variable, value): each refused by `python -m pipeline.run all` with exit code 2 and one line.
BAD = [
    ("RATE", "0"), ("RATE", "-1"), ("RATE", "1001"), ("RATE", "fast"), ("RATE", "nan"),
    ("ROOMS", "0"), ("DEVICES", "-2"), ("PARTITIONS", "0"), ("WRITER_BATCH_SIZE", "0"), ("WRITER_FLUSH_MS", "-5"),
    ("LIVE_WINDOW_S", "-300"), ("LIVE_MAX_POINTS", "0"), ("LIVE_BUCKETS", "0"), ("LIVE_MAX_PAGES", "0"), ("BROKER_MAX_MB", "0"),
    ("KAFKA_CLIENT_CONFIG", "security.protocol"), ("KAFKA_CLIENT_CONFIG", "a=1;=2"),
    ("PRODUCER_LINGER_MS", "-1"), ("BROKER_PORT", "99999"), ("BROKER_PORT", "0"), ("DASH_PORT", "70000"),
    ("REPLICATION_FACTOR", "0"), ("LOG_LEVEL", "loud"),
    ("STORE_URL", "foo://bar"), ("STORE_URL", "sqlite:///missing/dir/x.db"), ("STORE_URL", "sqlite://x.db"), ("STORE_URL", "questdb://"),
    ("STORE_URL", "http::addr=db:9000;pasword=x;"), ("STORE_URL", "https::addr=db:9000;username=w;"),
    ("STORE_URL", "http::addr=db;auto_flush=on;"), ("STORE_URL", "tcp::addr=db:9009;"), ("STORE_URL", "http::addr=db:port;"),
    ("STORE_URL", "https::addr=db;tls_verify=maybe;"), ("STORE_URL", "questdb://admin@db"),
    ("QUESTDB_PG_URL", "mysql://db"), ("QUESTDB_PG_URL", "postgresql://db:99999/qdb"), ("QUESTDB_PG_URL", "postgresql://db/?bogus=1"),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka"), ("KAFKA_BOOTSTRAP_SERVERS", "kafka:port"), ("KAFKA_BOOTSTRAP_SERVERS", "nohost:9092"),
]


BROKER_PORT = free_port()  # of every refused command's environment: nothing may listen there afterwards


@pytest.fixture
def env(tmp_path):
    """An isolated environment: its own run dir, broker port, dashboard port and store."""
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in config.SETTINGS} and k != "PIPELINE_SUPERVISOR_PID"}
    env.update(RUN_DIR=str(tmp_path / "run"), BROKER_PORT=str(BROKER_PORT), DASH_PORT=str(free_port()),
               STORE_URL=f"sqlite:///{tmp_path / 'store.db'}", PYTHONUNBUFFERED="1")
    return env


def refused(args: list[str], env: dict, variable: str, tmp_path: Path) -> str:
    """Run the command; assert it was refused in one line naming `variable` and started nothing."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    elapsed = time.monotonic() - started
    lines = result.stderr.splitlines()
    assert result.returncode == config.EXIT_CONFIG, result.stderr
    assert len(lines) == 1 and variable in lines[0] and lines[0].startswith("configuration error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and not result.stdout
    assert elapsed < 5, f"took {elapsed:.1f} s"
    # Nothing started: no run dir (pidfile), no store, no broker listening.
    assert not (tmp_path / "run").exists() and not (tmp_path / "store.db").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", BROKER_PORT)) != 0
    return lines[0]


@pytest.mark.parametrize(("variable", "value"), BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_run_all_refuses_a_bad_setting(env, tmp_path, variable, value):
    env[variable] = value
    line = refused(["pipeline.run", "all"], env, variable, tmp_path)
    assert f"{variable}='{value}' refused" in line


@pytest.mark.parametrize(("variable", "value"), [("LIVE_WINDOW_S", "0"), ("STORE_URL", "foo://bar"), ("DASH_PORT", "99999"),
                                                 ("KAFKA_BOOTSTRAP_SERVERS", "nohost:9092"), ("DASH_HOST", "nohost")])
def test_dashboard_refuses_a_bad_setting(env, tmp_path, variable, value):
    env[variable] = value
    refused(["dash_app"], env, variable, tmp_path)


@pytest.mark.parametrize("args", [["all", "--rate", "0"], ["all", "--rooms", "x"], ["producer", "temperature", "--devices", "0"],
                                  ["admin", "--partitions", "-1"]], ids=" ".join)
def test_command_line_options_are_refused_like_their_variable(env, tmp_path, args):
    line = refused(["pipeline.run", *args], env, args[-2], tmp_path)
    assert f"{args[-2]} (env {args[-2][2:].upper()})='{args[-1]}' refused" in line


@pytest.mark.parametrize("command", [["pipeline.run", "all"], ["dash_app"]], ids=" ".join)
def test_a_dashboard_port_in_use_is_refused(env, tmp_path, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["DASH_PORT"] = str(taken.getsockname()[1])
        assert "is already in use" in refused(command, env, "DASH_PORT", tmp_path)


def test_dashboard_help_prints_usage_and_starts_nothing(env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dash_app", "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m dash_app") and "DASH_PORT" in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("command", "options"), [
    ("all", {"--rooms", "--devices", "--rate", "--partitions", "--no-dashboard"}),
    ("admin", {"--partitions"}), ("producer", {"--rooms", "--devices", "--rate"}), ("consumer", set()), ("broker", set()),
])
def test_each_command_lists_only_the_options_it_honours(command, options):
    from pipeline.run import parser

    sub = parser()._subparsers._group_actions[0].choices[command]
    listed = {flag for action in sub._actions for flag in action.option_strings if flag.startswith("--") and flag != "--help"}
    assert listed == options
