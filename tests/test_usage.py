"""What each run cost: the worker measures it and the coordinator keeps it (``TaskInfo.usage``);
the SDK's DataFrames, ``mito client get task`` and the reference's protocol see it, or its absence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Platform, http
from mito_lab.client.sync import Client
from test_dispatch import register, submit, take

# 300 MB held, about half a second of CPU, in a child the task's shell waits for
HUNGRY = (
    "import time\n"
    "block = bytearray(300_000_000)\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < 0.5:\n"
    "    pass\n"
)


def test_a_run_reports_its_cpu_time_and_peak_memory(platform: Platform, client: Client) -> None:
    platform.start_worker("--slots", "2")
    hungry = client.submit(["sh", "-c", 'python3 -c "$PROGRAM"'], envs={"PROGRAM": HUNGRY}, labels=["cost"])
    light = client.submit("true", labels=["cost"])
    for handle in (hungry, light):
        handle.wait(timeout=60)
    usage = platform.api("GET", f"/tasks/{hungry.uuid}").json["info"]["usage"]
    assert usage["cpu_s"] >= 0.45 and usage["wall_s"] >= 0.45
    assert 300_000_000 <= usage["max_rss"] < 2_000_000_000
    assert usage["cores"] > 0 and usage["gpu_max_memory"] is None

    tasks = client.tasks(labels=["cost"])
    slowest = tasks.sort_values("cpu_s", ascending=False).iloc[0]
    assert slowest["uuid"] == str(hungry.uuid) and slowest["max_rss"] >= 300_000_000
    assert 0 < slowest["cpu_efficiency"] <= 1.05  # one busy core of those it had, at most
    assert str(tasks["cpu_s"].dtype) == "Float64" and str(tasks["max_rss"].dtype) == "Int64"
    light_row = tasks.set_index("uuid").loc[str(light.uuid)]
    assert light_row["max_rss"] < usage["max_rss"]

    printed = platform.mito("get", "task", str(hungry.uuid)).stdout
    [cost] = [line for line in printed.splitlines() if line.strip().startswith("cost:")]
    assert " s CPU in " in cost and "peak memory 3" in cost and " MB" in cost


def test_the_reference_protocol_commits_without_usage(platform: Platform) -> None:
    token = register(platform)
    task = submit(platform)
    work = take(platform, token)
    for op in ("Finish", {"Commit": {"exit_status": 0, "msg": None}}):
        assert http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": op}, token=token).status == 200
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert info["result"] == {"exit_status": 0, "msg": None} and info["usage"] is None
    [listed] = platform.api("POST", "/tasks/query", {}).json["tasks"]
    assert listed["usage"] is None


def test_a_commit_with_impossible_usage_is_refused(platform: Platform) -> None:
    token = register(platform)
    submit(platform)
    work = take(platform, token)
    assert http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": "Finish"}, token=token).status == 200
    commit = lambda usage: http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": {"Commit": {"exit_status": 0, "usage": usage}}}, token=token)  # noqa: E731
    answer = commit({"wall_s": 1, "cpu_s": -1, "max_rss": 0, "cores": 1})
    assert answer.status == 400 and "cpu_s" in answer.json["msg"]
    # numbers are strict, as in every request: ``true`` is not 1
    for field in ("wall_s", "cpu_s", "max_rss", "cores", "gpu_max_memory"):
        answer = commit({"wall_s": 1, "cpu_s": 1, "max_rss": 1, "cores": 1, field: True})
        assert answer.status == 400 and field in answer.json["msg"], field
    assert commit({"wall_s": 1, "cpu_s": 1, "max_rss": 1, "cores": 1, "gpu_max_memory": 1}).status == 200  # integers are numbers


# nvidia-smi's answer for this host: 700 MiB for every process whose command line carries the marker
FAKE_NVIDIA_SMI = """#!/bin/sh
for pid in $(pgrep -f gpu-marker); do echo "$pid, 700"; done
"""
ON_THE_GPU = 'python3 -c "import time; time.sleep(3)" gpu-marker'


def test_peak_gpu_memory_counts_the_tasks_own_processes(sqlite_platform: Platform, tmp_path: Path) -> None:
    """Where the host has nvidia-smi (here a stand-in that answers as it does), the worker samples
    the GPU memory of the task's processes: two of them, not the one outside the task."""
    platform = sqlite_platform
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tools / "nvidia-smi").chmod(0o755)
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gpu-marker"])
    try:
        platform.start_worker(env={"PATH": f"{tools}:{os.environ['PATH']}"})
        # (the marker only on the two processes: not on the shell's own command line)
        task = submit(platform, task_spec={"args": ["sh", "-c", 'eval "$RUN" & eval "$RUN"; wait'], "envs": {"RUN": ON_THE_GPU}})
        platform.wait_task(task)
        usage = platform.api("GET", f"/tasks/{task}").json["info"]["usage"]
        assert usage["gpu_max_memory"] == 2 * 700 * 2**20
    finally:
        outsider.kill()
        outsider.wait()
