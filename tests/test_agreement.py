"""A worker and its coordinator agree on time and on the task (issue 18): heartbeats within the
coordinator's timeout, a lifetime timed on the worker's monotonic clock, no task left Running
without a live worker, and no artifact recorded for bytes that never arrived."""

from __future__ import annotations

import contextlib
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from conftest import Platform, http, require_service
from test_dispatch import fetch, register, report, submit
from test_end_to_end import submitted_uuid
from test_protocol_v2 import exchange, info

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_worker_heartbeats_within_the_coordinators_timeout(platform: Platform) -> None:
    # the fixture's coordinator removes a worker after 10 s without a heartbeat; this one asks for a minute
    worker = platform.start_worker("--heartbeat-interval", "1m")
    task = submit(platform, task_spec={"args": ["sleep", "20"]})
    info = platform.wait_task(task, timeout=90)
    assert info["result"] == {"exit_status": 0, "msg": None} and info["attempts"] == 1  # it ran once
    assert worker.poll() is None
    assert "too long for the coordinator's heartbeat timeout" in (platform.home / "worker-0.log").read_text()


def test_a_worker_whose_clock_is_days_ahead_lives_its_lifetime(platform: Platform) -> None:
    if not LIBFAKETIME.exists():
        require_service("libfaketime (the faketime package) is not installed")
    skewed = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+2d"}  # the worker's wall clock (and its tasks') is 2 days ahead
    worker = platform.start_worker("--lifetime", "1h", env=skewed)
    task = submitted_uuid(platform.mito("submit", "--", "sh", "-c", 'date +%s > "$MITO_RESULT_DIR/now"').stdout)
    assert platform.wait_task(task)["result"] == {"exit_status": 0, "msg": None}
    assert worker.poll() is None  # it did not retire: an hour is an hour on any clock
    platform.mito("get", "artifact", task, "result", "-o", "now.tgz")
    with tarfile.open(platform.home / "now.tgz") as tar:
        worker_now = int(tar.extractfile("result/now").read())  # type: ignore[union-attr]
    assert worker_now > time.time() + 86400  # the clock really was skewed


def test_a_watch_on_an_unknown_task_is_refused_at_submit(platform: Platform) -> None:
    unknown = platform.mito("submit", "--watch", f"{uuid.uuid4()},ExecFinished", "--", "true", check=False)
    assert unknown.returncode != 0 and "the task to watch" in unknown.stdout + unknown.stderr
    assert platform.api("POST", "/tasks/query", {"count": True}).json["count"] == 0


def test_a_watch_that_is_refused_ends_the_task(platform: Platform) -> None:
    platform.start_worker()
    # a task of a group that the worker does not serve: the worker may not watch it
    assert platform.api("POST", "/groups", {"group_name": "elsewhere"}).status == 200
    watched = submit(platform, group_name="elsewhere")
    watching = submit(platform, task_spec={"args": ["true"], "watch": [watched, "ExecFinished"]})
    ended = platform.wait_task(watching)
    assert ended["state"] == "Cancelled" and ended["result"] == {"exit_status": 0, "msg": "WatchTimeout"}
    assert ended["exec_state"] == "TaskCommitted"


def test_a_refused_report_ends_the_task_on_both_protocols(platform: Platform) -> None:
    token = register(platform)
    batched = submit(platform)
    [taken] = exchange(platform, token, want=1)["tasks"]
    answer = exchange(platform, token, reports=[{"id": taken["id"], "ops": [{"Commit": {"exit_status": 0}}]}])  # it never ended
    assert [(r["id"], r["status"]) for r in answer["refused"]] == [(taken["id"], 400)]
    reference = submit(platform)
    task_id = fetch(platform, token)["id"]
    refused = http("POST", f"{platform.url}/workers/tasks", {"id": task_id, "op": {"Commit": {"exit_status": 0}}}, token=token)
    assert refused.status == 400
    assert refused.json["msg"] == "Process request error: Task can not be marked as done: the task ends ReportRefused"
    for task in (batched, reference):  # neither is left Running on a worker that dropped it
        assert info(platform, task)["state"] == "Cancelled"
        assert info(platform, task)["result"] == {"exit_status": 0, "msg": "ReportRefused"}


@contextlib.contextmanager
def heartbeating(platform: Platform, token: str) -> Iterator[None]:
    """Keep a worker of the raw protocol alive (the coordinator removes it after 10 s of silence)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(1):
            http("POST", f"{platform.url}/workers/heartbeat", token=token)

    beats = threading.Thread(target=beat)
    beats.start()
    try:
        yield
    finally:
        done.set()
        beats.join()


def test_cancelling_a_running_task_says_what_it_did(platform: Platform) -> None:
    token = register(platform)
    task = submit(platform)
    fetch(platform, token)  # a worker holds it and does not stop it
    with heartbeating(platform, token):
        asked = platform.mito("manage", "task", task, "cancel").stdout
        assert "its worker was told to stop it" in asked and "cancelled" not in asked
        again = platform.mito("manage", "task", task, "cancel", check=False)
        assert again.returncode != 0 and "being cancelled" in again.stdout + again.stderr  # it changes nothing, and says so
        assert info(platform, task)["state"] == "Running"
    waiting = submit(platform)
    assert "cancelled" in platform.mito("manage", "task", waiting, "cancel").stdout
    assert info(platform, waiting)["state"] == "Cancelled"


def storage_used(platform: Platform) -> int:
    return platform.api("GET", "/groups/mitosis_admin").json["storage_used"]


def test_a_worker_lost_before_its_upload_arrived_runs_the_task_again(platform: Platform) -> None:
    token = register(platform)  # this worker dies before the first byte of its result arrives
    task = submit(platform, task_spec={"args": ["sh", "-c", 'echo made > "$MITO_RESULT_DIR/made.txt"']})
    held = fetch(platform, token)
    assert report(platform, token, held["id"], "Finish").status == 200
    upload = report(platform, token, held["id"], {"Upload": {"content_type": "result", "content_length": 1000}})
    assert upload.status == 200 and upload.json["url"]
    assert platform.api("GET", f"/tasks/{task}").json["artifacts"] == []  # nothing recorded (or charged) before it arrived
    assert storage_used(platform) == 0
    platform.start_worker()  # takes the task once the coordinator gave up on the dead worker (10 s)
    ended = platform.wait_task(task, timeout=90)
    assert ended["state"] == "Finished" and ended["result"] == {"exit_status": 0, "msg": None} and ended["attempts"] == 2
    [result] = platform.api("GET", f"/tasks/{task}").json["artifacts"]
    assert result["content_type"] == "result" and storage_used(platform) == result["size"]
    platform.mito("get", "artifact", task, "result", "-o", "out.tgz")
    with tarfile.open(platform.home / "out.tgz") as tar:
        assert tar.extractfile("result/made.txt").read() == b"made\n"  # type: ignore[union-attr]


def test_a_commit_whose_output_never_arrived_says_so(platform: Platform) -> None:
    token = register(platform)
    task = submit(platform)
    [taken] = exchange(platform, token, want=1)["tasks"]
    upload = report(platform, token, taken["id"], {"Upload": {"content_type": "result", "content_length": 1000}})
    assert upload.status == 200 and upload.json["url"]  # and never used
    exchange(platform, token, reports=[{"id": taken["id"], "ops": ["Finish", {"Commit": {"exit_status": 0}}]}])
    ended = info(platform, task)
    assert ended["state"] == "Finished" and ended["result"] == {"exit_status": 0, "msg": "OutputsLost"}
    assert platform.api("GET", f"/tasks/{task}").json["artifacts"] == [] and storage_used(platform) == 0
