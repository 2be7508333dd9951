"""``mito up``: a whole local platform in one process tree (coordinator + N workers).

Children run in their own sessions so that Ctrl-C reaches only this process, which then stops the
workers first (they kill their running tasks and hand them back: Ready again) and the coordinator
last; so do SIGTERM and SIGHUP (its terminal closed). When the coordinator stops on its own (the
admin shutdown route, a signal of its own, a crash), its workers are stopped too and ``mito up``
exits 1: they cannot hand their tasks back to a coordinator that is gone, so those stay Running
until the coordinator starts again, which re-queues the tasks of workers that do not come back
within a few of their heartbeat intervals (``HEARTBEAT_INTERVAL``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mito_lab.config import CoordinatorConfig, load_config, parse_bind

STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0
# Its workers' heartbeat interval: a heartbeat is one small write, nothing for a local platform; and
# after a coordinator that stopped on its own starts again, the tasks its stopped workers held are
# re-queued within five of these (``services.workers.SILENT_INTERVALS``).
HEARTBEAT_INTERVAL = "10s"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _mito(*args: str) -> list[str]:
    return [sys.executable, "-m", "mito_lab", *args]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _port_taken(bind: str) -> str | None:
    """Why nothing can listen on ``bind``, or ``None``: checked before anything starts, since
    another platform there would answer the health checks meant for ours."""
    host, port = parse_bind(bind)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the coordinator listens: a closed connection's TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def up(bind: str, workers: int, data_dir: Path | None) -> int:
    flags = {"bind": bind, "data_dir": data_dir}
    config = load_config("coordinator", CoordinatorConfig, None, flags)
    url = f"http://{config.bind}"
    taken = _port_taken(config.bind)
    if taken:
        print(f"error: cannot listen on {config.bind}: {taken} (is mito_lab already up there? --bind HOST:PORT for another port)", file=sys.stderr)
        return 1
    coordinator = subprocess.Popen(
        _mito("coordinator", "--bind", config.bind, "--data-dir", str(config.data_dir)), start_new_session=True
    )
    interrupted = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, on_signal)
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _healthy(url):
        if coordinator.poll() is not None or interrupted or time.monotonic() > deadline:
            _stop([coordinator])
            print(f"error: the coordinator did not start on {url} (see its log above)", file=sys.stderr)
            return 1
        time.sleep(0.2)

    environment = dict(os.environ, MITO_PASSWORD=config.admin_password)
    credentials = config.data_dir / "up-credentials"
    fleet = [
        subprocess.Popen(
            _mito("worker", "-c", url, "-u", config.admin_user, "--credential-path", str(credentials),
                  "--polling-interval", "60s", "--heartbeat-interval", HEARTBEAT_INTERVAL),
            env=environment,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    print(
        f"\nmito_lab is up at {url}\n"
        f"  admin login: {config.admin_user} / {config.admin_password}\n"
        f"  workers:     {workers}\n"
        f"  data dir:    {config.data_dir}\n"
        f"  try:         mito client -c {url} -u {config.admin_user} -p {config.admin_password} submit -- echo hello\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    code = 0
    while not interrupted:
        if coordinator.poll() is not None:
            print("error: the coordinator stopped", file=sys.stderr)
            code = 1
            break
        for process in [p for p in fleet if p.poll() is not None and p.returncode != 0]:
            print(f"warning: worker {process.pid} exited with status {process.returncode}", file=sys.stderr)
            fleet.remove(process)
        time.sleep(0.5)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone: stop all the same
        print("stopping workers and coordinator...", flush=True)
    _stop(fleet)
    _stop([coordinator])
    return code
