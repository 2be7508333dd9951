"""A task's mistakes and mischief end that task, never the worker: resources that cannot be
written, folders emptied around it, FIFOs where the worker reads, bytes that are not text, and
processes left running (issue 18). Every test runs real workers and real tasks; what the task
does is the attack."""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
from pathlib import Path

import pytest

from conftest import Platform, http
from test_dispatch import submit
from test_lifecycle import processes_with, wait_for

from mito_lab.worker.containment import TaskCgroups

OCTETS = {"Content-Type": "application/octet-stream"}
# what the worker does with a task does not depend on the database
pytestmark = pytest.mark.parametrize("platform", ["sqlite-local"], indirect=True)


def attachment(platform: Platform, key: str, data: bytes) -> None:
    upload = platform.api("POST", "/groups/mitosis_admin/attachments", {"key": key, "content_length": len(data)}).json
    assert http("PUT", upload["url"], raw=data, headers=OCTETS).status == 200


def resource(key: str, local_path: str) -> dict[str, object]:
    return {"remote_file": {"Attachment": {"key": key}}, "local_path": local_path}


def still_serves(platform: Platform) -> None:
    """The worker runs a task after the hostile one, and that task's result arrives whole."""
    task = submit(platform, task_spec={"args": ["sh", "-c", 'echo fine > "$MITO_RESULT_DIR/ok.txt"']})
    assert platform.wait_task(task)["result"] == {"exit_status": 0, "msg": None}
    platform.mito("get", "artifact", task, "result", "-x", f"after-{task[:8]}")
    assert (platform.home / f"after-{task[:8]}" / "result" / "ok.txt").read_text() == "fine\n"
    assert all(worker.poll() is None for worker in platform.workers)


def test_resources_whose_paths_clash_are_refused_at_submit(platform: Platform) -> None:
    spec = {"args": ["true"], "resources": [resource("k", "a"), resource("k", "a/b")]}
    answer = platform.api("POST", "/tasks", {"task_spec": spec})
    assert answer.status == 400 and "'a' and 'a/b' clash" in answer.json["msg"]
    batch = platform.api("POST", "/tasks/submit", {"tasks": [{"task_spec": spec}]})
    assert batch.status == 400 and "clash" in batch.json["msg"]
    refused = platform.mito("submit", "-r", "attachment=k:data,attachment=k:data", "--", "true", check=False)
    assert refused.returncode == 2 and "clash" in refused.stderr


def test_a_resource_the_worker_cannot_write_fails_only_its_task(platform: Platform) -> None:
    """A task stored before clashing paths were refused (written into the database here, as an
    earlier release stored it) used to make every worker that took it exit."""
    attachment(platform, "data.txt", b"data")
    task = submit(platform)
    database = platform.home / "coordinator-data" / "mitosis.db"
    spec = {"args": ["true"], "resources": [resource("data.txt", "a"), resource("data.txt", "a/b")]}
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE tasks SET spec = ? WHERE uuid = ?", (json.dumps(spec), task.replace("-", "")))
    platform.start_worker()
    info = platform.wait_task(task)
    assert info["state"] == "Cancelled" and info["result"] == {"exit_status": 0, "msg": "WorkerError"}
    assert "resource a/b cannot be written" in platform.api("GET", f"/tasks/{task}/logs?stream=stderr").json["data"]
    still_serves(platform)


def test_a_task_that_empties_the_folders_around_it_fails_only_itself(platform: Platform) -> None:
    platform.start_worker()
    script = 'for up in .. ../.. ../../..; do rm -rf "$MITO_RESULT_DIR/$up"/* "$MITO_RESULT_DIR/$up"/.[!.]*; done; echo gone'
    task = submit(platform, task_spec={"args": ["sh", "-c", script], "terminal_output": True})
    info = platform.wait_task(task)
    assert info["state"] == "Finished" and info["result"]["exit_status"] == 0
    assert platform.api("GET", f"/tasks/{task}/logs").json["data"] == "gone\n"
    still_serves(platform)


def test_fifos_where_the_worker_reads_do_not_block_it(platform: Platform) -> None:
    """The task turns its log file, its new-task file and a result file into FIFOs."""
    platform.start_worker()
    script = (
        'mkfifo "$MITO_NEW_TASK" "$MITO_RESULT_DIR/pipe"; echo kept > "$MITO_RESULT_DIR/file.txt"; '
        'log=$(readlink /proc/$$/fd/1); rm -f "$log"; mkfifo "$log"; echo still-logged'
    )
    task = submit(platform, task_spec={"args": ["sh", "-c", script], "terminal_output": True})
    info = platform.wait_task(task)
    assert info["result"] == {"exit_status": 0, "msg": "SubmitNewTaskFailed"}  # the FIFO is not a task file
    assert platform.api("GET", f"/tasks/{task}/logs").json["data"] == "still-logged\n"
    platform.mito("get", "artifact", task, "result", "-x", "fifo-result")
    assert (platform.home / "fifo-result" / "result" / "file.txt").read_text() == "kept\n"
    still_serves(platform)


def test_any_bytes_a_task_prints_reach_the_log(platform: Platform) -> None:
    platform.start_worker()
    script = r"printf 'before\000after\n'; sleep 1; printf 'bad \377\376 bytes\n'; sleep 1; printf 'split \342\202'; sleep 1; printf '\254 euro\n'"
    task = submit(platform, task_spec={"args": ["sh", "-c", script]})
    platform.wait_task(task)
    log = platform.api("GET", f"/tasks/{task}/logs").json
    assert log["data"] == "before\ufffdafter\nbad \ufffd\ufffd bytes\nsplit \u20ac euro\n"


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "orphans"])
def test_every_process_of_a_task_ends_with_it(platform: Platform, cgroup: bool) -> None:
    """A task detaches a process into a session of its own (reparented to the worker); it must
    not outlive the task, nor touch the next task's folders. With several slots, a process
    detached by a task still running is left alone until that task ends."""
    platform.start_worker("--slots", "2", *([] if cgroup else ["--no-task-cgroup"]))
    suffix = secrets.token_hex(4)
    marker, long_marker = f"mito-escape-{suffix}", f"mito-stays-{suffix}"

    def detaching(prefix: str, seconds: float) -> list[str]:
        # the marker is assembled by the shell, so that only the detached process's command line has it
        loop = 'while :; do echo tampered > "$1/../../tampered"; sleep 0.2; done'
        # it detaches after a moment: what a task forks before its move into the cgroup is an orphan only
        return ["sh", "-c", f"m={prefix}; sleep 0.3; setsid sh -c '{loop}' \"${{m}}{suffix}\" \"$MITO_RESULT_DIR\" & sleep {seconds}"]

    long = submit(platform, task_spec={"args": detaching("mito-stays-", 6)})
    [detached] = wait_for(lambda: processes_with(long_marker), "the long task's detached process")
    if cgroup and host_offers_cgroups():  # the task's process went into its slot's cgroup, and its children with it
        assert "/mito-worker-" in Path(f"/proc/{detached}/cgroup").read_text()
    short = submit(platform, task_spec={"args": detaching("mito-escape-", 0.5)})
    assert platform.wait_task(short)["result"] == {"exit_status": 0, "msg": None}
    wait_for(lambda: not processes_with(marker), "the short task's detached process to be killed", timeout=10)
    assert processes_with(long_marker), "a running task's detached process is its own business"
    platform.wait_task(long, timeout=30)
    wait_for(lambda: not processes_with(long_marker), "the long task's detached process to be killed", timeout=10)
    still_serves(platform)


def host_offers_cgroups() -> bool:
    offered = TaskCgroups.offered()
    if offered is not None:
        offered.close()
    return offered is not None


def test_each_task_gets_fresh_folders_that_are_removed_afterwards(platform: Platform) -> None:
    platform.start_worker()
    script = 'echo "$MITO_RESULT_DIR" > "$MITO_RESULT_DIR/where"; touch "$MITO_RESULT_DIR/../left-behind"'
    folders = []
    for _ in range(2):
        task = submit(platform, task_spec={"args": ["sh", "-c", script]})
        platform.wait_task(task)
        platform.mito("get", "artifact", task, "result", "-x", task)
        folders.append(Path((platform.home / task / "result" / "where").read_text().strip()))
    assert folders[0] != folders[1] and folders[0].parent.parent == folders[1].parent.parent
    assert len(folders[0].parent.name) > 10  # not guessable from the worker's id or a slot number
    assert not folders[0].parent.exists() and not folders[1].parent.exists()


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "orphans"])
def test_nothing_a_task_started_outlives_its_stopped_worker(platform: Platform, cgroup: bool) -> None:
    worker = platform.start_worker(*([] if cgroup else ["--no-task-cgroup"]))
    suffix = secrets.token_hex(4)
    detach = f"m=mito-outlives-; setsid sh -c 'while :; do sleep 0.2; done' \"${{m}}{suffix}\" & sleep 60"
    submit(platform, task_spec={"args": ["sh", "-c", detach]})
    wait_for(lambda: processes_with(f"mito-outlives-{suffix}"), "the detached process")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    wait_for(lambda: not processes_with(f"mito-outlives-{suffix}"), "the detached process to be killed", timeout=10)
