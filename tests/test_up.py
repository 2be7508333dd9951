"""``mito up``: the README's first command, a whole local platform in one process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Platform, free_port, isolated_env, stop_process
from mito_lab.testing import wait_until


def running_with(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return found.stdout.split()


def stop_up(process: subprocess.Popen[str], data: Path) -> None:
    """Stop ``mito up`` and, should it have left any behind, the processes it started."""
    stop_process(process)
    process.stdout.close()  # type: ignore[union-attr]
    for pid in running_with(str(data)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def start_up(home: Path, data: Path, port: int, workers: int) -> tuple[subprocess.Popen[str], str]:
    """``mito up`` on ``data`` and ``port``, its output piped; returns once its banner is out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mito_lab", "up", "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--data-dir", str(data)],
        env=isolated_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any("Press Ctrl-C" in line for line in lines):
        if time.monotonic() > deadline or process.poll() is not None:
            stop_up(process, data)
            raise AssertionError("".join(lines))
        lines.append(process.stdout.readline())  # type: ignore[union-attr]
    return process, "".join(lines)


def test_up_runs_tasks_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "up-data"
    port = free_port()
    process, banner = start_up(tmp_path, data, port, 2)
    try:
        assert f"http://127.0.0.1:{port}" in banner and "admin login: mitosis_admin / mitosis_admin" in banner

        platform = Platform(home=tmp_path, url=f"http://127.0.0.1:{port}", coordinator=process)
        tasks = [platform.api("POST", "/tasks", {"task_spec": {"args": ["sleep", "0.5"]}}).json["uuid"] for _ in range(2)]
        for task in tasks:
            assert platform.wait_task(task)["result"] == {"exit_status": 0, "msg": None}
        assert len(running_with(str(data))) == 4  # `mito up` itself, the coordinator and two workers

        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        assert running_with(str(data)) == []
        output = banner + process.stdout.read()  # type: ignore[union-attr]
        assert output.count("registered as worker") == 2
        assert output.count("unregistered") == 2  # both workers handed back cleanly before the coordinator stopped
    finally:
        stop_up(process, data)


def gated(platform: Platform, gate: Path) -> str:
    """A task that runs until ``gate`` exists, once it runs (Running, its process spawned)."""
    task = platform.api("POST", "/tasks", {"task_spec": {"args": ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.1; done']}}).json["uuid"]
    wait_until(lambda: platform.api("GET", f"/tasks/{task}").json["info"]["exec_state"] == "ExecSpawned", "the task to run")
    return task


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_up_stopped_while_a_task_runs_hands_the_task_back_and_leaves_no_process(tmp_path: Path, stop: signal.Signals) -> None:
    """SIGTERM (a service manager stops it), SIGHUP (its terminal closed): as Ctrl-C, the workers
    stop first and hand their running tasks back, then the coordinator."""
    data, gate, port = tmp_path / "up-data", tmp_path / "gate", free_port()
    process, _ = start_up(tmp_path, data, port, 1)
    try:
        platform = Platform(home=tmp_path, url=f"http://127.0.0.1:{port}", coordinator=process)
        task = gated(platform, gate)
        process.send_signal(stop)
        assert process.wait(60) == 0
        assert running_with(str(data)) == [] and running_with(str(gate)) == []  # nor the task's process
    finally:
        stop_up(process, data)
        gate.touch()
    again, _ = start_up(tmp_path, data, port, 0)
    try:
        info = Platform(home=tmp_path, url=f"http://127.0.0.1:{port}", coordinator=again).api("GET", f"/tasks/{task}").json["info"]
        assert (info["state"], info["attempts"]) == ("Ready", 1)  # waiting for its next attempt, not Running
    finally:
        stop_up(again, data)


def test_up_whose_coordinator_stops_stops_its_workers(tmp_path: Path) -> None:
    """The coordinator stopped on its own: its workers cannot hand back their tasks (that waits for
    the coordinator's next start, see test_faults); ``mito up`` stops them and exits 1."""
    data, gate, port = tmp_path / "up-data", tmp_path / "gate", free_port()
    process, _ = start_up(tmp_path, data, port, 1)
    try:
        gated(Platform(home=tmp_path, url=f"http://127.0.0.1:{port}", coordinator=process), gate)
        [coordinator] = [pid for pid in running_with(str(data)) if "coordinator" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")]
        os.kill(int(coordinator), signal.SIGTERM)
        assert process.wait(60) == 1
        assert "error: the coordinator stopped" in process.stdout.read()  # type: ignore[union-attr]
        assert running_with(str(data)) == [] and running_with(str(gate)) == []
    finally:
        stop_up(process, data)
        gate.touch()


def test_a_second_up_on_a_busy_port_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = subprocess.run(
            [sys.executable, "-m", "mito_lab", "up", "--workers", "1", "--bind", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
            env=isolated_env(tmp_path), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
    assert second.returncode == 1 and "mito_lab is up" not in second.stdout
    assert second.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use") and second.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()  # nothing started: no coordinator made its data dir, no worker registered
