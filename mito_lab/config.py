"""Layered configuration, durations and sizes.

Precedence, lowest to highest (as the reference): built-in defaults, the global file
``$XDG_CONFIG_HOME/mitosis/config.toml``, the ``--config`` file (else ``./config.toml``),
``MITO_*`` environment variables, command-line flags. Each file has one table per mode
(``[coordinator]``, ``[worker]``, ``[client]``).
"""

from __future__ import annotations

import functools
import math
import os
import re
import tomllib
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

# --- durations (humantime syntax: "600s", "5m", "7d", "1h 30m", "1year") -------------------------

_DURATION_UNITS = {
    "nsec": 1e-9, "ns": 1e-9,
    "usec": 1e-6, "us": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "sec": 1, "secs": 1, "s": 1,
    "minutes": 60, "minute": 60, "min": 60, "mins": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hr": 3600, "hrs": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400,
    "weeks": 604800, "week": 604800, "w": 604800,
    "months": 2_630_016, "month": 2_630_016, "M": 2_630_016,  # 30.44 days, as humantime
    "years": 31_557_600, "year": 31_557_600, "y": 31_557_600,  # 365.25 days, as humantime
}
_DURATION_PART = re.compile(r"\s*(\d+)\s*([A-Za-z]+)")
MAX_DURATION = timedelta(days=365 * 100)


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse a humantime duration such as ``"10min"`` or ``"1h 30m"``; numbers are seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _bounded(float(text), text)
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")
    return _parse_duration_text(text)


@functools.lru_cache(maxsize=256)
def _parse_duration_text(text: str) -> timedelta:
    """Cached: a batch of 10,000 tasks carries the same few timeouts."""
    raw = text.strip()
    if raw.isdigit():
        return _bounded(float(raw), text)
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        unit = match.group(2)
        factor = _DURATION_UNITS.get(unit) or _DURATION_UNITS.get(unit.lower())
        if factor is None:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r}")
        seconds += int(match.group(1)) * factor
        pos = match.end()
    if pos == 0 or raw[pos:].strip():
        raise ValueError(f"invalid duration {text!r} (examples: 600s, 10min, 1h 30m, 7d)")
    return _bounded(seconds, text)


def _bounded(seconds: float, text: object) -> timedelta:
    if seconds < 0 or seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is out of range (0 to 100 years)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Format like humantime: ``timedelta(minutes=90)`` -> ``"1h 30m"``."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), Field(gt=timedelta(0))]

# --- sizes ("16GB", "1GiB", "500MB", "1024") --------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_size(text: str | int) -> int:
    """Parse a byte size: decimal units (``GB``) are powers of 1000, binary ones (``GiB``) of 1024."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"invalid size {text!r} (examples: 1024, 500MB, 16GB, 2GiB)")
    number, unit = float(match.group(1)), match.group(2).upper()
    prefix = unit.rstrip("B").rstrip("I")
    base = 1024 if "I" in unit else 1000
    size = number * base ** _SIZE_POWERS[prefix]
    if not math.isfinite(size):
        raise ValueError(f"size {text!r} is too large")
    return int(size)


# --- well-known directories ---------------------------------------------------------------------


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "mitosis"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "mitosis"


def default_data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "mitosis"


def default_credential_path() -> Path:
    return config_dir() / "credentials"


# --- per-mode settings -------------------------------------------------------------------------


def _comma_list(value: Any) -> Any:
    """Lists may come as ``"a,b"`` (env, flags) or as TOML arrays."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [item.strip() for raw in value for item in str(raw).split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_comma_list)]


def _coordinator_address(value: Any) -> Any:
    """A coordinator's URL; ``HOST:PORT`` alone, as people type it, means ``http://HOST:PORT``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parsed = urllib.parse.urlsplit(text)
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not a coordinator address: give http://HOST:PORT (or HOST:PORT)")
    return text


CoordinatorAddress = Annotated[str, BeforeValidator(_coordinator_address)]


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``; an empty host is every address) as a host and a port."""
    host, _, port = bind.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"invalid bind address {bind!r}: use HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]") or "0.0.0.0", number


def _bind(value: Any) -> Any:
    if isinstance(value, str):
        parse_bind(value)
    return value


def without_password(url: str) -> str:
    """``url`` as it may be shown: its password, if any, replaced by ``***``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CoordinatorConfig(_Settings):
    bind: Annotated[str, BeforeValidator(_bind)] = "127.0.0.1:5000"
    # The coordinator's address as clients reach it (behind a proxy): the local object store's URLs
    # start with it. None: with the scheme and Host of the request that asks for one.
    public_url: CoordinatorAddress | None = None
    data_dir: Path = default_data_dir()
    db_url: str | None = None  # None: embedded SQLite in the data dir
    s3_url: str | None = None  # None: local object store in the data dir
    s3_access_key: str = "mitosis_access"
    s3_secret_key: str = "mitosis_secret"
    s3_region: str = "mitosis"
    s3_force_path_style: bool = False
    artifacts_bucket: str = "mitosis-artifacts"
    attachments_bucket: str = "mitosis-attachments"
    redis_url: str | None = None
    redis_worker_password: str | None = None
    redis_client_password: str | None = None
    redis_skip_acl_rules: bool = False
    admin_user: str = "mitosis_admin"
    admin_password: str = "mitosis_admin"
    access_token_private_path: Path | None = None  # None: generated into the data dir
    access_token_public_path: Path | None = None
    access_token_expires_in: Duration = timedelta(days=7)
    heartbeat_timeout: Duration = timedelta(seconds=600)
    log_path: Path | None = None
    file_log: bool = False
    # What no client may exceed (README, Security notes): open /events sockets per user; events
    # waiting for one socket before its reader is dropped as too slow; a connection's time to send
    # its request headers (and to stay idle between requests); a JSON body's time to arrive.
    events_sockets_per_user: Annotated[int, Field(ge=1)] = 16
    events_queue_limit: Annotated[int, Field(ge=1)] = 50_000
    events_ping_interval: PositiveDuration = timedelta(seconds=30)
    http_idle_timeout: PositiveDuration = timedelta(seconds=60)
    http_body_timeout: PositiveDuration = timedelta(seconds=60)
    # Campaign alerts' webhooks (README, Campaign alerts): each POST's time to be answered, the
    # attempts made before giving up, the wait before the first retry (doubled at each one), and
    # the hosts a webhook may name (empty: any; the coordinator POSTs from inside your network).
    alert_timeout: PositiveDuration = timedelta(seconds=10)
    alert_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    alert_backoff: PositiveDuration = timedelta(seconds=2)
    alert_hosts: CommaList = []


class WorkerConfig(_Settings):
    coordinator_addr: CoordinatorAddress = "http://127.0.0.1:5000"
    polling_interval: Duration = timedelta(minutes=3)
    heartbeat_interval: Duration = timedelta(minutes=5)
    credential_path: Path | None = None
    user: str | None = None
    password: str | None = None
    groups: CommaList = []
    tags: CommaList = []
    labels: CommaList = []
    log_path: Path | None = None
    file_log: bool = False
    shared_log: bool = False
    lifetime: Duration | None = None
    skip_redis: bool = False
    slots: Annotated[int, Field(ge=1, le=256)] = 1
    task_cgroup: bool = True  # a cgroup v2 per task where the host lets the worker make one
    task_user: str | None = None  # the account that runs the tasks (the worker must be root); None: the worker's own


class ClientConfig(_Settings):
    coordinator_addr: CoordinatorAddress = "http://127.0.0.1:5000"
    credential_path: Path | None = None
    user: str | None = None
    password: str | None = None
    # Unlike the reference, logging in keeps the user's other sessions (notebook, workers, shells)
    # valid by default; `retain = false` restores the reference's one-session-per-user behaviour.
    retain: bool = True


class ConfigError(Exception):
    """A configuration file or value that cannot be used; the message says which and why."""


SettingsT = TypeVar("SettingsT", bound=_Settings)

# Extra environment names people reach for first (SPEC section 5 uses MITO_COORDINATOR).
_ENV_ALIASES = {"coordinator": "coordinator_addr"}


def _read_table(path: Path, mode: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    table = document.get(mode, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{mode}] must be a table")
    return table


def _environment(fields: set[str], environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("MITO_"):
            continue
        key = name[len("MITO_"):].lower()
        key = _ENV_ALIASES.get(key, key)
        if key in fields:
            values[key] = value
    return values


def load_config(
    mode: str,
    model: type[SettingsT],
    config_path: Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> SettingsT:
    """Merge every layer for ``mode`` into a validated ``model``.

    Flags whose value is ``None`` were not given and do not override lower layers.
    """
    merged: dict[str, Any] = {}
    global_file = config_dir() / "config.toml"
    if global_file.is_file():
        merged.update(_read_table(global_file, mode))
    if config_path is not None:
        if not Path(config_path).is_file():
            raise ConfigError(f"config file {config_path} does not exist")
        merged.update(_read_table(Path(config_path), mode))
    elif Path("config.toml").is_file():
        merged.update(_read_table(Path("config.toml"), mode))
    merged.update(_environment(set(model.model_fields), dict(os.environ if environ is None else environ)))
    merged.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid {mode} configuration: {problems}") from None
