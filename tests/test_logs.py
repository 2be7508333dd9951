"""Live output: shipped by workers in bounded chunks, kept in a bounded window, followed by clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ADMIN, Platform
from test_dispatch import fetch, register, report, submit
from test_end_to_end import submitted_uuid


def ship(platform: Platform, token: str, task_id: int, stream: str, offset: int, data: str) -> None:
    chunk = {"stream": stream, "offset": offset, "length": len(data.encode()), "data": data}
    assert report(platform, token, task_id, {"Log": chunk}).status == 200


def test_chunks_window_and_completion(platform: Platform) -> None:
    task = submit(platform)
    token = register(platform)
    work = fetch(platform, token)
    ship(platform, token, work["id"], "stdout", 0, "hello ")
    ship(platform, token, work["id"], "stdout", 6, "world\n")
    ship(platform, token, work["id"], "stdout", 0, "hello ")  # a retried chunk is ignored
    ship(platform, token, work["id"], "stderr", 0, "oops\n")
    first = platform.api("GET", f"/tasks/{task}/logs").json
    assert first == {"stream": "stdout", "offset": 0, "next": 12, "data": "hello world\n", "complete": False, "kept": True}
    assert platform.api("GET", f"/tasks/{task}/logs?offset=6").json["data"] == "world\n"
    assert platform.api("GET", f"/tasks/{task}/logs?stream=stderr").json["data"] == "oops\n"
    assert platform.api("GET", f"/tasks/{task}/logs?stream=other").status == 400
    # only the newest megabyte is kept: older output is dropped and the answer says where it starts
    big = "x" * 60000 + "\n"
    offset = 12
    for _ in range(20):
        ship(platform, token, work["id"], "stdout", offset, big)
        offset += len(big)
    window = platform.api("GET", f"/tasks/{task}/logs").json
    assert window["offset"] > 0 and offset - window["offset"] <= (1 << 20) + len(big)
    report(platform, token, work["id"], "Finish")
    report(platform, token, work["id"], {"Commit": {"exit_status": 0}})
    rest = platform.api("GET", f"/tasks/{task}/logs?offset={offset}&wait=30").json
    assert rest == {"stream": "stdout", "offset": offset, "next": offset, "data": "", "complete": True, "kept": True}
    platform.add_user("sam")
    assert platform.api("GET", f"/tasks/{task}/logs", user="sam").status == 403


def test_follow_shows_output_while_the_task_runs(platform: Platform) -> None:
    platform.start_worker()
    gate = platform.home / "gate"  # the task holds after its first line until the test opens the gate
    script = f'echo line 1; while [ ! -e "{gate}" ]; do sleep 0.1; done; for i in 2 3 4 5; do echo line $i; done; echo done >&2'
    task = submitted_uuid(platform.mito("submit", "--", "sh", "-c", script).stdout)
    follower = subprocess.Popen(
        [sys.executable, "-m", "mito_lab", "client", "-c", platform.url, "-u", ADMIN[0], "-p", ADMIN[1], "get", "logs", task, "--follow"],
        env=platform.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        assert follower.stdout.readline() == "line 1\n"  # type: ignore[union-attr]
        assert platform.api("GET", f"/tasks/{task}").json["info"]["state"] == "Running"  # it is held at the gate
        gate.touch()
        rest = follower.stdout.read()  # type: ignore[union-attr]  # (not communicate(): it would skip what readline buffered)
        assert follower.wait(60) == 0, follower.stderr.read()  # type: ignore[union-attr]
    finally:
        follower.kill()
        follower.wait()
        follower.stdout.close()  # type: ignore[union-attr]
        follower.stderr.close()  # type: ignore[union-attr]
    assert "line 1\n" + rest == "".join(f"line {i}\n" for i in range(1, 6))
    assert platform.mito("get", "logs", task, "--stderr").stdout == "done\n"
    assert platform.mito("get", "logs", task).stdout == "".join(f"line {i}\n" for i in range(1, 6))


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_200_megabyte_flood_keeps_the_worker_small(platform: Platform) -> None:
    worker = platform.start_worker()
    flood = "import sys\nchunk = 'y' * (1 << 20) + '\\n'\nfor _ in range(200):\n    sys.stdout.write(chunk)\n"
    task = submitted_uuid(platform.mito("submit", "--terminal", "--", sys.executable, "-c", flood).stdout)
    info = platform.wait_task(task, timeout=120)
    assert info["result"] == {"exit_status": 0, "msg": None}
    artifacts = {a["content_type"]: a["size"] for a in platform.api("GET", f"/tasks/{task}").json["artifacts"]}
    assert artifacts["std-log"] > 0  # the whole output was packed and uploaded, streamed
    # the task's output went to a file and was shipped in 64 KiB pieces: the worker never held it
    assert peak_rss_kib(worker.pid) < 150 * 1024
    tail = platform.api("GET", f"/tasks/{task}/logs").json
    assert tail["offset"] > 190 * (1 << 20) and tail["data"].endswith("y\n")
