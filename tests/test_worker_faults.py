"""The worker against failures (killed mid-task, stopped, a coordinator that goes away, the end of
its lifetime) and its inputs (resources)."""

from __future__ import annotations

import secrets
import signal
import tarfile
import time

from conftest import Platform, http, stop_process
from test_dispatch import submit
from test_end_to_end import submitted_uuid
from test_lifecycle import processes_with, wait_for

OCTETS = {"Content-Type": "application/octet-stream"}


def exec_state(platform: Platform, task: str) -> str | None:
    return platform.api("GET", f"/tasks/{task}").json["info"]["exec_state"]


def test_a_task_of_a_killed_worker_finishes_on_another(platform: Platform) -> None:
    # the fixture's coordinator drops a worker after 10 s without heartbeats
    doomed = platform.start_worker("--labels", "doomed")
    task = submit(platform, task_spec={"args": ["sleep", "4"]})
    wait_for(lambda: exec_state(platform, task) == "ExecSpawned", "the task to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    survivor = platform.start_worker("--labels", "survivor")
    info = platform.wait_task(task, timeout=90)
    assert info["result"] == {"exit_status": 0, "msg": None} and info["attempts"] == 2
    assert survivor.poll() is None


def test_the_worker_rides_out_a_coordinator_outage(platform: Platform) -> None:
    platform.start_worker()
    script = 'sleep 6; echo survived > "$MITO_RESULT_DIR/out.txt"'
    task = submitted_uuid(platform.mito("submit", "--", "sh", "-c", script).stdout)
    wait_for(lambda: exec_state(platform, task) == "ExecSpawned", "the task to start")
    stop_process(platform.coordinator)
    time.sleep(10)  # the task finishes while nobody listens; the worker keeps retrying
    platform.start_coordinator()
    info = platform.wait_task(task, timeout=120)
    assert info["result"] == {"exit_status": 0, "msg": None} and info["attempts"] == 1
    platform.mito("get", "artifact", task, "result", "-o", "out.tgz")
    with tarfile.open(platform.home / "out.tgz") as tar:
        assert tar.extractfile("result/out.txt").read() == b"survived\n"  # type: ignore[union-attr]
    assert platform.workers[0].poll() is None


def test_sigterm_hands_the_task_back_and_kills_it(platform: Platform) -> None:
    worker = platform.start_worker()
    marker = f"mito-handback-{secrets.token_hex(4)}"
    task = submit(platform, task_spec={"args": ["sh", "-c", f"python3 -c 'import time; time.sleep(600)' {marker} & wait"]})
    wait_for(lambda: processes_with(marker), "the task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert info["state"] == "Ready" and info["attempts"] == 1  # handed back at once, not after a timeout
    assert processes_with(marker) == []


def test_a_worker_leaves_cleanly_at_the_end_of_its_lifetime(platform: Platform) -> None:
    worker = platform.start_worker("--lifetime", "45s", "--labels", "mortal")  # retires 30 s before expiry
    wait_for(lambda: platform.api("POST", "/workers/query", {"labels": ["mortal"], "count": True}).json["count"] == 1, "registration")
    assert worker.wait(60) == 0
    assert platform.api("POST", "/workers/query", {"labels": ["mortal"], "count": True}).json["count"] == 0


def test_resources_are_downloaded_before_the_command_runs(platform: Platform) -> None:
    platform.start_worker()
    upload = platform.api("POST", "/groups/mitosis_admin/attachments", {"key": "data/input.csv", "content_length": 4}).json
    assert http("PUT", upload["url"], raw=b"a,b\n", headers=OCTETS).status == 200
    odd = platform.api("POST", "/groups/mitosis_admin/attachments", {"key": "odd name?.txt", "content_length": 3}).json
    assert http("PUT", odd["url"], raw=b"odd", headers=OCTETS).status == 200
    spaced = submitted_uuid(platform.mito("submit", "-r", "attachment=odd name?.txt:odd.txt", "--", "true").stdout)
    assert platform.wait_task(spaced)["result"] == {"exit_status": 0, "msg": None}  # a key with a space and a "?" is fetched
    producer = submitted_uuid(platform.mito("submit", "--", "sh", "-c", 'echo made > "$MITO_RESULT_DIR/made.txt"').stdout)
    platform.wait_task(producer)
    script = 'cp "$MITO_RESOURCE_DIR/in/input.csv" "$MITO_RESOURCE_DIR/prev.tgz" "$MITO_RESULT_DIR/"'
    consumer = submitted_uuid(platform.mito(
        "submit", "-r", f"attachment=data/input.csv:in/input.csv,artifact={producer}:result:prev.tgz", "--", "sh", "-c", script
    ).stdout)
    assert platform.wait_task(consumer)["result"] == {"exit_status": 0, "msg": None}
    platform.mito("get", "artifact", consumer, "result", "-x", "unpacked")
    assert (platform.home / "unpacked" / "result" / "input.csv").read_bytes() == b"a,b\n"
    with tarfile.open(platform.home / "unpacked" / "result" / "prev.tgz") as tar:  # stored as-is, as the reference
        assert tar.extractfile("result/made.txt").read() == b"made\n"  # type: ignore[union-attr]
    missing = submitted_uuid(platform.mito("submit", "-r", "attachment=nope.csv:x.csv", "--", "true").stdout)
    assert platform.wait_task(missing)["result"] == {"exit_status": 0, "msg": "ResourceNotFound"}
    escaping = platform.mito("submit", "-r", "attachment=data/input.csv:../../etc/x", "--", "true", check=False)
    assert escaping.returncode == 2 and "absolute or contains `..`" in escaping.stderr
