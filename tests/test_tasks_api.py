"""Task routes beyond submit/get/query: batches, changes, labels, cancellation, artifact batches,
and the columnar listing."""

from __future__ import annotations

import asyncio
import shlex
import uuid
from pathlib import Path
from datetime import datetime
from typing import Any

import pyarrow as pa

from conftest import ADMIN, Answer, Platform, http, start_platform
from mito_lab.server.services.task_columns import ROWS_PER_BATCH
from mito_lab.server.services.tasks import BULK_LOAD_TASKS
from mito_lab.testing import wait_until
from mito_lab.wire import MAX_BATCH_TASKS, task_columns_schema
from test_dispatch import fetch, register, report, submit

OCTETS = {"Content-Type": "application/octet-stream"}


def put_artifact(platform: Platform, task: str, data: bytes, kind: str = "result", user: str = ADMIN[0]) -> None:
    upload = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": kind, "content_length": len(data)}, user=user)
    assert http("PUT", upload.json["url"], raw=data, headers=OCTETS).status == 200


def test_batch_submit_keeps_order_and_reports_each_item(platform: Platform) -> None:
    platform.add_user("hal")
    body = {"tasks": [
        {"task_spec": {"args": ["true"]}, "labels": ["one"]},
        {"task_spec": {"args": ["true"]}, "group_name": "hal"},
        {"task_spec": {"args": ["true"]}, "group_name": "nowhere"},
        {"task_spec": {"args": ["true"]}, "labels": ["four"]},
    ]}
    results = platform.api("POST", "/tasks/submit", body).json["results"]
    assert [r["Ok"]["task_id"] if r["Ok"] else None for r in results] == [1, None, None, 2]
    assert results[1]["Err"]["msg"] == "Authentication error: Permission denied: you are not a member of group hal"
    assert results[2]["Err"]["msg"] == "User or group with name nowhere not found"
    assert platform.api("POST", "/tasks/submit", {"tasks": []}).status == 400


def test_change_a_ready_task_and_relabel_any_task(platform: Platform) -> None:
    task = submit(platform, tags=["gpu"], priority=1)
    assert platform.api("PUT", f"/tasks/{task}", {}).json["msg"] == "Process request error: No change specified"
    change = {"tags": [], "priority": 7, "timeout": "2m", "task_spec": {"args": ["echo", "changed"]}}
    assert platform.api("PUT", f"/tasks/{task}", change).status == 200
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert (info["tags"], info["priority"], info["timeout"], info["spec"]["args"]) == ([], 7, 120, ["echo", "changed"])
    token = register(platform)  # untagged: the change made the task runnable here
    work = fetch(platform, token)
    assert work["uuid"] == task
    assert platform.api("PUT", f"/tasks/{task}", {"priority": 1}).status == 404  # running now
    report(platform, token, work["id"], "Finish")
    report(platform, token, work["id"], {"Commit": {"exit_status": 0}})
    assert platform.api("PUT", f"/tasks/{task}/labels", {"labels": ["done", "x"]}).status == 200
    assert platform.api("GET", f"/tasks/{task}").json["info"]["labels"] == ["done", "x"]
    assert platform.api("POST", "/tasks/query", {"labels": ["done"]}).json["tasks"][0]["uuid"] == task
    assert platform.api("PUT", f"/tasks/{task}/labels", {"labels": []}).status == 200


def test_cancel_by_filter_and_by_list(platform: Platform) -> None:
    platform.add_user("ivy")
    keep = submit(platform, labels=["keep"])
    drop = [submit(platform, labels=["drop"]) for _ in range(3)]
    cancelled = platform.api("POST", "/tasks/cancel", {"labels": ["drop"]}).json
    assert cancelled == {"cancelled_count": 3, "group_name": ADMIN[0]}
    assert all(platform.api("GET", f"/tasks/{t}").json["info"]["state"] == "Cancelled" for t in drop)
    assert platform.api("GET", f"/tasks/{keep}").json["info"]["state"] == "Ready"
    assert platform.api("POST", "/tasks/cancel", {"group_name": ADMIN[0]}, user="ivy").status == 403
    theirs = submit(platform, user="ivy", group_name="ivy")
    unknown = str(uuid.uuid4())
    listed = platform.api("POST", "/tasks/cancel/list", {"uuids": [keep, theirs, unknown]}, user="ivy").json
    assert listed["cancelled_count"] == 1 and set(listed["failed_uuids"]) == {keep, unknown}
    assert platform.api("GET", f"/tasks/{keep}").json["info"]["state"] == "Ready"


def test_artifact_batches_respect_groups_and_the_guard(platform: Platform) -> None:
    platform.add_user("jay")
    mine = [submit(platform, labels=["batch"]) for _ in range(2)]
    theirs = submit(platform, user="jay", group_name="jay")
    for task in mine:
        put_artifact(platform, task, task.encode())
    assert platform.api("POST", f"/tasks/{theirs}/artifacts", {"content_type": "result", "content_length": 1}).status == 403
    put_artifact(platform, theirs, b"secret", kind="exec-log", user="jay")
    by_filter = platform.api("POST", "/tasks/download/artifacts", {"labels": ["batch"], "content_type": "result"}).json
    assert {d["uuid"] for d in by_filter["downloads"]} == set(mine)
    for item in by_filter["downloads"]:
        assert http("GET", item["url"]).body == item["uuid"].encode()
    by_list = platform.api("POST", "/tasks/download/artifacts/list", {"uuids": [*mine, theirs], "content_type": "exec-log"}, user="jay").json
    assert [d["uuid"] for d in by_list["downloads"]] == [theirs]
    outsider = platform.api("POST", "/tasks/download/artifacts/list", {"uuids": [*mine, theirs], "content_type": "result"}, user="jay").json
    assert outsider["downloads"] == []  # jay cannot read the admin's group
    not_member = platform.api("POST", "/tasks/download/artifacts/list", {"uuids": [theirs], "content_type": "exec-log"}).json
    assert not_member["downloads"] == []  # nor can a system admin read jay's through the user routes
    # everything was written just now: ordinary deletes are refused, the admin route is not
    assert platform.api("DELETE", f"/tasks/{mine[0]}/artifacts/result").status == 400
    assert platform.api("POST", "/tasks/delete/artifacts", {"labels": ["batch"], "content_type": "result"}).json == {"deleted_count": 0}
    listed = platform.api("POST", "/tasks/delete/artifacts/list", {"uuids": mine, "content_type": "result"}).json
    assert listed["deleted_count"] == 0 and set(listed["failed_uuids"]) == set(mine)
    assert platform.api("DELETE", f"/admin/tasks/{mine[0]}/artifacts/result").status == 200
    assert platform.api("GET", f"/tasks/{mine[0]}/download/artifacts/result").status == 404
    assert platform.api("DELETE", f"/admin/tasks/{mine[0]}/artifacts/result").status == 404
    assert platform.api("DELETE", f"/admin/tasks/{theirs}/artifacts/exec-log", user="jay").status == 403


def arrow_table(answer: Answer) -> pa.Table:
    assert answer.status == 200, answer.body[:500]
    return pa.ipc.open_stream(answer.body).read_all()


def as_columns(task: dict[str, Any]) -> dict[str, Any]:
    """A task of ``POST /tasks/query`` as the columnar route's row should show it."""
    moment = {name: task[name] and datetime.fromisoformat(task[name]) for name in ("created_at", "updated_at", "started_at", "ended_at")}
    result = task["result"] or {}
    usage = task["usage"] or {}
    return {
        "uuid": task["uuid"], "task_id": task["task_id"], "group": task["group_name"], "creator": task["creator_username"],
        "state": task["state"], "exec_state": task["exec_state"], "command": shlex.join(task["spec"]["args"]),
        "tags": task["tags"], "labels": task["labels"], "priority": task["priority"], "timeout": task["timeout"],
        "attempts": task["attempts"], "exit_status": result.get("exit_status"), "msg": result.get("msg"), **moment,
        "duration": moment["ended_at"] - moment["started_at"] if task["started_at"] and task["ended_at"] else None,
        "worker": task["reporter_uuid"], "upstream": task["upstream_task_uuid"], "downstream": task["downstream_task_uuid"],
        "cpu_s": usage.get("cpu_s"), "max_rss": usage.get("max_rss"), "gpu_max_memory": usage.get("gpu_max_memory"),
        "cpu_efficiency": usage["cpu_s"] / usage["wall_s"] / usage["cores"] if usage else None,
        "cached_from": task["cached_from"],
    }


def test_the_columns_list_what_the_query_lists(platform: Platform) -> None:
    token = register(platform)
    done = submit(platform, labels=["col", "done"], task_spec={"args": ["sh", "-c", "exit 3"]})
    work = fetch(platform, token)
    report(platform, token, work["id"], {"ExecState": "ExecSpawned"})
    report(platform, token, work["id"], "Finish")
    usage = {"wall_s": 2.0, "cpu_s": 3.0, "max_rss": 123_456_789, "cores": 2.0, "gpu_max_memory": 2**30}
    report(platform, token, work["id"], {"Commit": {"exit_status": 3, "usage": usage}})
    cancelled = submit(platform, labels=["col"], tags=["gpu"])
    assert platform.api("DELETE", f"/tasks/{cancelled}").status == 200
    for priority in range(4):
        submit(platform, labels=["col"], tags=["gpu", "big"], priority=priority, task_spec={"args": ["echo", "it's", str(priority)]})
    submit(platform, labels=["other"])
    schema = task_columns_schema()
    for body in ({}, {"labels": ["col"], "limit": 3, "offset": 1}, {"labels": ["col"], "states": ["Finished", "Cancelled"]},
                 {"tags": ["gpu", "big"], "priority": ">=2"}, {"exit_status": "3"}, {"labels": ["nothing-has-this"]}):
        listed = platform.api("POST", "/tasks/query", body).json["tasks"]
        table = arrow_table(platform.api("POST", "/tasks/query/columns", body))
        assert table.schema == schema
        rows = table.to_pylist()
        for row in rows:  # timeouts and durations come as timedeltas: compare seconds
            row["timeout"] = row["timeout"].total_seconds()
        assert rows == [as_columns(task) for task in listed], body
    finished = arrow_table(platform.api("POST", "/tasks/query/columns", {"labels": ["done"]})).to_pylist()[0]
    assert (finished["uuid"], finished["state"], finished["exit_status"], finished["exec_state"]) == (done, "Finished", 3, "TaskCommitted")
    assert finished["duration"].total_seconds() >= 0 and finished["worker"] is not None
    assert (finished["cpu_s"], finished["max_rss"], finished["cpu_efficiency"], finished["gpu_max_memory"]) == (3.0, 123_456_789, 0.75, 2**30)


def test_the_columns_refuse_what_the_query_refuses(platform: Platform) -> None:
    platform.add_user("lee")
    submit(platform)
    for body in ({"limit": -1}, {"states": []}, {"nope": 1}, {"priority": ">x"}, {"group_name": ADMIN[0]}, {"group_name": "nowhere"}):
        paged = platform.api("POST", "/tasks/query", body, user="lee")
        columns = platform.api("POST", "/tasks/query/columns", body, user="lee")
        assert paged.status in (400, 403, 404) and (columns.status, columns.json) == (paged.status, paged.json), body
    not_json = platform.api("POST", "/tasks/query/columns", raw=b"{not json")
    assert not_json.status == 400 and "the body is not valid JSON" in not_json.json["msg"]
    counted = platform.api("POST", "/tasks/query/columns", {"count": True})
    assert counted.status == 400 and "POST /tasks/query counts" in counted.json["msg"]
    assert platform.api("PUT", f"/groups/{ADMIN[0]}/users", {"relations": {"lee": "Read"}}).status == 200
    assert arrow_table(platform.api("POST", "/tasks/query/columns", {"group_name": ADMIN[0]}, user="lee")).num_rows == 1


def test_a_long_listing_comes_in_record_batches(platform: Platform) -> None:
    count = ROWS_PER_BATCH + 5
    tasks = [{"task_spec": {"args": ["true"]}, "labels": [f"n{n % 3}"]} for n in range(count)]
    for start in range(0, count, MAX_BATCH_TASKS):  # a batch submit takes at most MAX_BATCH_TASKS
        answer = platform.api("POST", "/tasks/submit", {"tasks": tasks[start : start + MAX_BATCH_TASKS]})
        assert answer.status == 200 and all(item["Ok"] for item in answer.json["results"])
    reader = pa.ipc.open_stream(platform.api("POST", "/tasks/query/columns", {}).body)
    batches = list(reader)
    assert [batch.num_rows for batch in batches] == [ROWS_PER_BATCH, 5]
    table = pa.Table.from_batches(batches)
    assert table.column("task_id").to_pylist() == list(range(count, 0, -1))
    assert table.column("labels").to_pylist()[:3] == [[f"n{n % 3}"] for n in range(count - 1, count - 4, -1)]
    assert set(table.column("state").to_pylist()) == {"Ready"}


def test_a_large_batch_refreshes_the_planner_statistics_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Until PostgreSQL analyzes the tasks again, it plans claims for the table as it was before a
    large batch (scanning every Ready task): the coordinator analyzes it after such a batch."""
    import asyncpg

    async def last_analyze() -> Any:
        connection = await asyncpg.connect(pg_url)
        try:
            return await connection.fetchval("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'tasks'")
        finally:
            await connection.close()

    platform = start_platform(tmp_path / "platform", "--db", pg_url)
    try:
        def batch(count: int) -> None:
            body = {"tasks": [{"task_spec": {"args": ["true"]}} for _ in range(count)]}
            assert platform.api("POST", "/tasks/submit", body).status == 200

        batch(BULK_LOAD_TASKS - 1)
        batch(10)
        assert asyncio.run(last_analyze()) is None  # small batches leave it to autovacuum
        batch(BULK_LOAD_TASKS)
        wait_until(lambda: asyncio.run(last_analyze()) is not None, "the tasks to be analyzed", timeout=20)
    finally:
        platform.stop()
