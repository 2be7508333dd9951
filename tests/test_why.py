"""Why a task waits (``GET /tasks/{uuid}/why``, ``client.explain``, ``mito client why``): the answer
follows the dispatch rules, checked against workers that speak the protocol over HTTP."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from conftest import ADMIN, Platform, http, start_platform
from mito_lab.client.sync import Client
from test_dispatch import fetch, register, submit, take


def why(platform: Platform, uuid: str, user: str = ADMIN[0]) -> Any:
    answer = platform.api("GET", f"/tasks/{uuid}/why", user=user)
    assert answer.status == 200, answer.body
    return answer.json


def fits(answer: Any) -> dict[str, str]:
    return {worker["worker_id"]: worker["fit"] for worker in answer["workers"]}


def registered(platform: Platform, **body: Any) -> tuple[str, str]:
    """A worker registered over HTTP: its token and its id."""
    answer = platform.api("POST", "/workers", {"groups": [], **body})
    assert answer.status == 200, answer.body
    return answer.json["token"], answer.json["worker_id"]


def test_each_worker_of_the_group_is_judged_by_the_dispatch_rules(platform: Platform) -> None:
    assert platform.api("POST", "/groups", {"group_name": "lab"}).status == 200
    _, reader_id = registered(platform, groups=["lab:read"], tags=["gpu", "cuda"])
    _, gpu_only_id = registered(platform, groups=["lab:write"], tags=["gpu"])
    busy, busy_id = registered(platform, groups=["lab:write"], tags=["gpu", "cuda"])
    held = submit(platform, group_name="lab", priority=9)
    assert take(platform, busy)["uuid"] == held

    first = submit(platform, group_name="lab", tags=["gpu", "cuda"], priority=1)
    task = submit(platform, group_name="lab", tags=["gpu", "cuda"])
    answer = why(platform, task)
    assert answer["state"] == "Ready" and answer["ahead"] == 1  # the older task of higher priority goes first
    assert fits(answer) == {reader_id: "ReadOnly", gpu_only_id: "MissingTags", busy_id: "Busy"}
    [lacking] = [w for w in answer["workers"] if w["fit"] == "MissingTags"]
    assert lacking["missing_tags"] == ["cuda"]
    [holder] = [w for w in answer["workers"] if w["fit"] == "Busy"]
    assert [h["uuid"] for h in holder["holding"]] == [held]
    assert "1 task of the group goes first" in answer["summary"] and "is busy" in answer["summary"]
    assert why(platform, first)["ahead"] == 0

    idle, idle_id = registered(platform, groups=["lab:write"], tags=["cuda", "gpu"])
    answer = why(platform, first)
    assert fits(answer)[idle_id] == "Idle" and "it is next in the group's queue; 1 idle worker can take it" == answer["summary"]
    assert fetch(platform, idle)["uuid"] == first  # the rules it states are the ones dispatch follows
    running = why(platform, first)
    assert running["state"] == "Running" and running["ahead"] is None and idle_id in running["summary"]


def test_no_worker_that_can_run_it_is_said_plainly(platform: Platform) -> None:
    task = submit(platform, tags=["tpu"])
    assert why(platform, task)["summary"] == f"no worker serves group {ADMIN[0]}: start one that does (mito worker -g {ADMIN[0]})"
    register(platform, tags=["gpu"])
    summary = why(platform, task)["summary"]
    assert summary.startswith(f"no worker serving group {ADMIN[0]} can run it: ") and "lacks the task's tag tpu" in summary


def test_a_downstream_task_waits_for_its_upstream(platform: Platform) -> None:
    worker = register(platform)
    upstream = submit(platform)
    work = take(platform, worker)
    assert http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": "Finish"}, token=worker).status == 200
    answer = http("POST", f"{platform.url}/workers/tasks", {"id": work["id"], "op": {"Submit": {"task_spec": {"args": ["true"]}}}}, token=worker)
    assert answer.status == 200, answer.body
    downstream = platform.api("GET", f"/tasks/{upstream}").json["info"]["downstream_task_uuid"]
    answer = why(platform, downstream)
    assert answer["state"] == "Pending"
    assert answer["waiting_for"] == [{"kind": "upstream", "uuid": upstream, "state": "Finished", "exec_state": "FetchResource", "wanted": None}]
    assert answer["summary"] == f"it waits for its upstream task to commit ({upstream}: Finished)"


def test_only_members_may_ask_and_silent_workers_show_offline(tmp_path: Path) -> None:
    # offline two of its heartbeats late, long before the coordinator gives up on it (10 minutes)
    platform = start_platform(tmp_path / "platform", "--heartbeat-timeout", "10m")
    try:
        task = submit(platform)
        register(platform)
        registered(platform, heartbeat_interval="30s")
        platform.add_user("stranger")
        refused = platform.api("GET", f"/tasks/{task}/why", user="stranger")
        assert refused.status == 403 and "not a member" in refused.json["msg"]
        with contextlib.closing(sqlite3.connect(platform.home / "coordinator-data" / "mitosis.db")) as database, database:
            database.execute("UPDATE workers SET last_heartbeat = datetime(last_heartbeat, '-90 seconds')")
        quiet, frequent = why(platform, task)["workers"]  # by the timeout's three heartbeats, and by its own
        assert quiet["fit"] == "Idle" and frequent["fit"] == "Offline" and frequent["reason"].startswith("no heartbeat for 1 min 3")
        with contextlib.closing(sqlite3.connect(platform.home / "coordinator-data" / "mitosis.db")) as database, database:
            database.execute("UPDATE workers SET last_heartbeat = datetime(last_heartbeat, '-6 minutes')")
        answer = why(platform, task)  # (the frequent one, five of its heartbeats late, may be gone by now)
        assert answer["workers"] and all(worker["fit"] == "Offline" for worker in answer["workers"])
        assert answer["summary"] == "it is next in the group's queue; the workers that could run it are offline or shutting down"
    finally:
        platform.stop()


def test_the_sdk_and_the_cli_give_the_same_answer(platform: Platform, client: Client) -> None:
    handle = client.submit("true", tags=["gpu"])
    register(platform)
    explanation = client.explain(handle.uuid)
    assert explanation.summary.startswith(f"no worker serving group {ADMIN[0]} can run it")
    assert explanation.workers[0].fit.value == "MissingTags"
    text = str(explanation)
    assert text.splitlines()[0] == f"Task {handle.uuid} (Ready): {explanation.summary}"
    assert explanation._repr_html_().startswith("<pre>Task ")
    printed = platform.mito("why", str(handle.uuid)).stdout
    assert printed.strip() == text
    assert platform.mito("why", "not-a-uuid", check=False).returncode == 2
