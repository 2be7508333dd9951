"""Configuration layering, durations and sizes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from mito_lab.config import (
    ConfigError,
    CoordinatorConfig,
    WorkerConfig,
    format_duration,
    load_config,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600s", 600), ("5m", 300), ("10min", 600), ("1h 30m", 5400), ("7d", 604800), ("2w", 1209600),
     ("1year", 31557600), ("1M", 2630016), ("250ms", 0.25), ("42", 42), (90, 90)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "10 parsecs", "5m garbage", "-5s", "1000years"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h 30m"
    assert format_duration(timedelta(0)) == "0s"
    assert parse_duration(format_duration(timedelta(days=1, seconds=61))) == timedelta(days=1, seconds=61)


@pytest.mark.parametrize(("text", "size"), [("16GB", 16 * 10**9), ("2GiB", 2 * 2**30), ("500MB", 5 * 10**8), ("1024", 1024), ("1.5kb", 1500)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects() -> None:
    for text in ("lots", "12XB", "-5"):
        with pytest.raises(ValueError):
            parse_size(text)


def test_layers_apply_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    global_file = tmp_path / "xdg" / "mitosis" / "config.toml"
    global_file.parent.mkdir(parents=True)
    global_file.write_text('[worker]\npolling_interval = "1m"\nheartbeat_interval = "2m"\ntags = ["a"]\nfile_log = true\n')
    given = tmp_path / "given.toml"
    given.write_text('[worker]\nheartbeat_interval = "3m"\nlifetime = "1d"\n[coordinator]\nbind = "0.0.0.0:1"\n')
    environ = {"MITO_LIFETIME": "2d", "MITO_GROUPS": "x,y:read", "MITO_UNRELATED": "ignored"}

    config = load_config("worker", WorkerConfig, given, {"tags": ["b,c"], "file_log": None}, environ)
    assert config.polling_interval == timedelta(minutes=1)  # global file
    assert config.heartbeat_interval == timedelta(minutes=3)  # --config file beats the global one
    assert config.lifetime == timedelta(days=2)  # environment beats files
    assert config.groups == ["x", "y:read"]
    assert config.tags == ["b", "c"]  # flags beat everything
    assert config.file_log is True  # a flag that was not given does not override
    assert config.coordinator_addr == "http://127.0.0.1:5000"  # default


def test_local_config_toml_is_read_when_no_file_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[coordinator]\nbind = "127.0.0.1:6000"\nheartbeat_timeout = "30s"\n')
    config = load_config("coordinator", CoordinatorConfig, None, {}, {})
    assert config.bind == "127.0.0.1:6000" and config.heartbeat_timeout == timedelta(seconds=30)


def test_bad_configuration_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[worker]\npolling_intervall = "1m"\n')
    with pytest.raises(ConfigError, match="polling_intervall"):
        load_config("worker", WorkerConfig, bad, {}, {})
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        load_config("worker", WorkerConfig, None, {"heartbeat_interval": "often"}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("worker", WorkerConfig, tmp_path / "missing.toml", {}, {})
    broken = tmp_path / "broken.toml"
    broken.write_text("[worker\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config("worker", WorkerConfig, broken, {}, {})
