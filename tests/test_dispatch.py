"""The worker protocol and the scheduling rules, spoken over HTTP as a worker would."""

from __future__ import annotations

import threading
import time
from typing import Any

from conftest import ADMIN, Platform, http


def register(platform: Platform, user: str = ADMIN[0], **body: Any) -> str:
    answer = platform.api("POST", "/workers", {"groups": [], **body}, user=user)
    assert answer.status == 200, answer.body
    return answer.json["token"]


def submit(platform: Platform, user: str = ADMIN[0], **body: Any) -> str:
    answer = platform.api("POST", "/tasks", {"task_spec": {"args": ["true"]}, **body}, user=user)
    assert answer.status == 200, answer.body
    return answer.json["uuid"]


def fetch(platform: Platform, token: str, wait: float = 0) -> Any:
    answer = http("GET", f"{platform.url}/workers/tasks?wait={wait}", token=token)
    assert answer.status == 200, answer.body
    return answer.json


def report(platform: Platform, token: str, task_id: int, op: Any) -> Any:
    return http("POST", f"{platform.url}/workers/tasks", {"id": task_id, "op": op}, token=token)


def take(platform: Platform, token: str) -> Any:
    """Fetch a task and start it (its first exec state), as a worker does."""
    work = fetch(platform, token)
    if work is not None:
        assert report(platform, token, work["id"], {"ExecState": "FetchResource"}).status == 200
    return work


def test_fetch_without_wait_answers_null_at_once(platform: Platform) -> None:
    assert fetch(platform, register(platform)) is None


def test_long_poll_returns_the_task_submitted_while_waiting(platform: Platform) -> None:
    token = register(platform)
    fetched: list[Any] = []
    waiter = threading.Thread(target=lambda: fetched.append(fetch(platform, token, wait=60)))
    waiter.start()
    time.sleep(0.5)
    task = submit(platform)
    waiter.join(timeout=30)  # the poll waits up to 60 s: finishing here means it was woken by the submit
    assert not waiter.is_alive()
    assert fetched[0]["uuid"] == task
    assert fetched[0]["timeout"] == "10m"


def test_task_tags_must_be_a_subset_of_the_worker_tags(platform: Platform) -> None:
    gpu = submit(platform, tags=["gpu"])
    plain = submit(platform)
    untagged_worker = register(platform)
    assert take(platform, untagged_worker)["uuid"] == plain
    assert take(platform, untagged_worker) is None  # an untagged worker runs only untagged tasks
    tagged_worker = register(platform, tags=["gpu", "cuda"])
    assert fetch(platform, tagged_worker)["uuid"] == gpu


def test_every_tag_of_a_task_must_be_on_the_worker(platform: Platform) -> None:
    both = submit(platform, tags=["gpu", "cuda"])
    for tags in (["gpu"], ["cuda"], ["gpu", "cpu"]):
        worker = register(platform, tags=tags)
        assert fetch(platform, worker) is None, tags
        assert exchange(platform, worker)["tasks"] == [], tags  # the protocol v2 claim as well
    assert fetch(platform, register(platform, tags=["cuda", "gpu", "big"]))["uuid"] == both


def test_a_worker_with_read_in_a_group_never_gets_its_tasks(platform: Platform) -> None:
    assert platform.api("POST", "/groups", {"group_name": "lab"}).status == 200
    task = submit(platform, group_name="lab")
    reader = register(platform, groups=["lab:read"])
    assert fetch(platform, reader) is None
    assert exchange(platform, reader)["tasks"] == []
    assert fetch(platform, register(platform, groups=["lab:write"]))["uuid"] == task


def exchange(platform: Platform, token: str) -> Any:
    answer = http("POST", f"{platform.url}/workers/exchange", {"want": 4}, token=token)
    assert answer.status == 200, answer.body
    return answer.json


def test_priority_first_then_first_in_first_out(platform: Platform) -> None:
    low = [submit(platform, priority=0) for _ in range(3)]
    high = [submit(platform, priority=5) for _ in range(3)]
    token = register(platform)
    order = [take(platform, token)["uuid"] for _ in range(6)]
    assert order == high + low


def test_a_fetch_whose_answer_was_lost_is_answered_again(platform: Platform) -> None:
    """A worker asks only when idle: a task it holds and never started was lost on the way (the
    coordinator died, the connection broke), so it gets the same task again, not a second one."""
    first, second = submit(platform), submit(platform)
    token = register(platform)
    lost = fetch(platform, token)
    again = fetch(platform, token)
    assert again == lost and again["uuid"] == first
    assert platform.api("GET", f"/tasks/{first}").json["info"]["attempts"] == 1
    assert report(platform, token, again["id"], {"ExecState": "FetchResource"}).status == 200
    assert take(platform, token)["uuid"] == second  # once started, the next fetch is new work


def test_workers_serve_only_groups_they_may_write(platform: Platform) -> None:
    platform.add_user("alice")
    platform.add_user("mallory")
    task = submit(platform, user="alice", group_name="alice")
    # registering for someone else's group is refused, and the worker never sees its tasks
    refused = platform.api("POST", "/workers", {"groups": ["alice"]}, user="mallory")
    assert refused.status == 403
    assert fetch(platform, register(platform, user="mallory")) is None
    assert platform.api("POST", "/workers", {"groups": ["nosuchgroup"]}, user="alice").status == 404
    assert platform.api("POST", "/workers", {"groups": ["alice:boss"]}, user="alice").status == 400
    reader = register(platform, user="alice", groups=["alice:read"])  # the personal group is always Admin
    assert fetch(platform, reader)["uuid"] == task


def test_report_cycle_archives_the_task(platform: Platform) -> None:
    task = submit(platform)
    token = register(platform)
    other = register(platform)
    work = fetch(platform, token)
    assert work["uuid"] == task and work["spec"]["args"] == ["true"]
    assert platform.api("GET", f"/tasks/{task}").json["info"]["state"] == "Running"
    assert report(platform, other, work["id"], "Finish").status == 404  # not that worker's task
    assert report(platform, token, work["id"], "Finish").status == 200
    upload = report(platform, token, work["id"], {"Upload": {"content_type": "result", "content_length": 4}})
    assert upload.status == 200 and upload.json["url"]
    assert http("PUT", upload.json["url"], raw=b"data", headers={"Content-Type": "application/octet-stream"}).status == 200
    assert report(platform, token, work["id"], {"Commit": {"exit_status": 0, "msg": None}}).status == 200
    info = platform.api("GET", f"/tasks/{task}").json
    assert info["info"]["state"] == "Finished" and info["info"]["result"] == {"exit_status": 0, "msg": None}
    assert [a["content_type"] for a in info["artifacts"]] == ["result"]
    assert report(platform, token, work["id"], "Finish").status == 404  # archived: no longer reportable
    # the worker may read its group's tasks and artifacts
    assert http("GET", f"{platform.url}/workers/tasks/{task}", token=token).json["info"]["uuid"] == task
    assert http("GET", f"{platform.url}/workers/tasks/{task}/artifacts/result", token=token).json["size"] == 4


def test_unregister_requeues_the_running_task(platform: Platform) -> None:
    task = submit(platform)
    first = register(platform)
    assert fetch(platform, first)["uuid"] == task
    assert http("DELETE", f"{platform.url}/workers", token=first).body == b"null"
    assert platform.api("GET", f"/tasks/{task}").json["info"]["state"] == "Ready"
    assert http("POST", f"{platform.url}/workers/heartbeat", token=first).status == 401
    assert fetch(platform, register(platform))["uuid"] == task


def test_a_finished_task_is_never_run_again(platform: Platform) -> None:
    task = submit(platform)
    token = register(platform)
    work = fetch(platform, token)
    assert report(platform, token, work["id"], "Finish").status == 200
    http("DELETE", f"{platform.url}/workers", token=token)  # gone before committing
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert info["state"] == "Finished"
    assert fetch(platform, register(platform)) is None


def test_silent_worker_is_removed_and_its_task_requeued(platform: Platform) -> None:
    # the fixture's coordinator runs with --heartbeat-timeout 10s
    task = submit(platform)
    token = register(platform)
    assert fetch(platform, token)["uuid"] == task
    deadline = time.monotonic() + 30
    while platform.api("GET", f"/tasks/{task}").json["info"]["state"] != "Ready":
        assert time.monotonic() < deadline, "the task was not re-queued after the heartbeat timeout"
        time.sleep(0.5)
    assert http("POST", f"{platform.url}/workers/heartbeat", token=token).status == 401
