"""Configuration lives in one place, and the README documents all of it."""
import re
from pathlib import Path

import pytest

from pipeline import config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.env)
def test_readme_documents_every_setting_with_its_default(setting):
    row = re.search(rf"^\| `{setting.env}` \| (.*?) \|", README, re.M)
    assert row, f"{setting.env} missing from the README's configuration table"
    assert (f"`{setting.default}`" if setting.default else "empty") in row.group(1)


def test_defaults_load_and_bad_numbers_are_clear_errors(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    cfg = config.load()
    assert cfg.embedded_broker and cfg.bootstrap_servers == "127.0.0.1:19092"
    assert cfg.store_url == "sqlite:///data/dashboard.db" and cfg.partitions == 3
    monkeypatch.setenv("RATE", "fast")
    with pytest.raises(SystemExit, match="RATE='fast'"):
        config.load()


def test_setting_kafka_means_no_embedded_broker(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    cfg = config.load()
    assert not cfg.embedded_broker and cfg.bootstrap_servers == "kafka:9092"
