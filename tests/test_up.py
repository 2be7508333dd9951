"""``mito up``: the README's first command, a whole local platform in one process tree."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import Platform, free_port, isolated_env, stop_process


def running_with(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return found.stdout.split()


def test_up_runs_tasks_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "up-data"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mito_lab", "up", "--workers", "2", "--bind", f"127.0.0.1:{port}", "--data-dir", str(data)],
        env=isolated_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("Press Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
        banner = "".join(lines)
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
        stop_process(process)
        process.stdout.close()  # type: ignore[union-attr]


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
