"""Managing workers: reading, querying, retagging, group roles and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import pytest
from tornado.websocket import websocket_connect

from conftest import ADMIN, Platform, backend_args, http, start_platform
from mito_lab.testing import wait_until
from test_dispatch import fetch, report, submit, take


def register(platform: Platform, user: str = ADMIN[0], **body: object) -> tuple[str, str]:
    answer = platform.api("POST", "/workers", {"groups": [], **body}, user=user).json
    return answer["worker_id"], answer["token"]


def test_reading_and_querying_workers_needs_a_shared_group(platform: Platform) -> None:
    platform.add_user("kim")
    platform.add_user("lee")
    platform.add_user("max")
    platform.api("POST", "/groups", {"group_name": "rig"}, user="kim")
    platform.api("PUT", "/groups/rig/users", {"relations": {"lee": "read"}}, user="kim")
    worker, _ = register(platform, user="kim", groups=["rig:read"], tags=["gpu", "a100"], labels=["rack1"])
    seen = platform.api("GET", f"/workers/{worker}", user="lee").json
    assert seen["groups"] == {"kim": "Admin", "rig": "Read"}
    assert seen["info"]["tags"] == ["gpu", "a100"] and seen["info"]["creator_username"] == "kim"
    assert seen["info"]["state"] == "Normal" and seen["info"]["assigned_task_id"] is None
    assert platform.api("GET", f"/workers/{worker}", user="max").status == 403
    assert platform.api("GET", f"/workers/{uuid.uuid4()}", user="kim").status == 404
    found = platform.api("POST", "/workers/query", {"group_name": "rig", "tags": ["gpu"]}, user="lee").json
    assert [w["worker_id"] for w in found["workers"]] == [worker] and found["count"] == 1
    assert platform.api("POST", "/workers/query", {"group_name": "rig", "tags": ["cpu"]}, user="lee").json["count"] == 0
    assert platform.api("POST", "/workers/query", {"group_name": "rig", "role": ["Write"], "count": True}, user="lee").json["count"] == 0
    assert platform.api("POST", "/workers/query", {"group_name": "rig"}, user="max").status == 403


def test_retagging_applies_at_the_next_fetch(platform: Platform) -> None:
    worker, token = register(platform)
    task = submit(platform, tags=["gpu"])
    assert fetch(platform, token) is None
    assert platform.api("PUT", f"/workers/{worker}/tags", {"tags": ["gpu"]}).status == 200
    assert fetch(platform, token)["uuid"] == task
    assert platform.api("PUT", f"/workers/{worker}/labels", {"labels": ["moved"]}).status == 200
    assert platform.api("GET", f"/workers/{worker}").json["info"]["labels"] == ["moved"]
    platform.add_user("nia")
    assert platform.api("PUT", f"/workers/{worker}/tags", {"tags": []}, user="nia").status == 403


def test_group_roles_on_a_worker(platform: Platform) -> None:
    platform.add_user("ola")
    platform.api("POST", "/groups", {"group_name": "lab"})
    worker, token = register(platform)
    lab_task = submit(platform, group_name="lab")
    assert fetch(platform, token) is None
    assert platform.api("PUT", f"/workers/{worker}/groups", {"relations": {"lab": "write"}}).status == 200
    assert fetch(platform, token)["uuid"] == lab_task  # the new group's waiting task is picked up
    assert platform.api("PUT", f"/workers/{worker}/groups", {"relations": {"nope": "read"}}).status == 400
    # ola administers nothing on this worker, and cannot hand it her group's tasks either way
    assert platform.api("PUT", f"/workers/{worker}/groups", {"relations": {"ola": "write"}}, user="ola").status == 403
    assert platform.api("PUT", f"/workers/{worker}/groups", {"relations": {"ola": "write"}}).status == 403
    assert platform.api("DELETE", f"/workers/{worker}/groups?groups=lab").status == 200
    assert "lab" not in platform.api("GET", f"/workers/{worker}").json["groups"]
    platform.api("PUT", f"/workers/{worker}/groups", {"relations": {"lab": "read"}})
    assert http("DELETE", f"{platform.url}/workers/{worker}/groups/remove", {"groups": ["lab"]}, token=platform.token()).status == 200
    assert list(platform.api("GET", f"/workers/{worker}").json["groups"]) == [ADMIN[0]]


def test_graceful_and_forced_shutdown(platform: Platform) -> None:
    idle, idle_token = register(platform)
    assert platform.api("DELETE", f"/workers/{idle}").status == 200  # graceful on an idle worker: gone now
    assert http("POST", f"{platform.url}/workers/heartbeat", token=idle_token).status == 401

    busy, busy_token = register(platform)
    task = submit(platform)
    work = take(platform, busy_token)
    assert platform.api("DELETE", f"/workers/{busy}?op=graceful").status == 200
    assert platform.api("GET", f"/workers/{busy}").json["info"]["state"] == "GracefulShutdown"
    submit(platform)
    assert fetch(platform, busy_token) is None  # no new work while shutting down
    report(platform, busy_token, work["id"], "Finish")
    report(platform, busy_token, work["id"], {"Commit": {"exit_status": 0}})
    assert platform.api("GET", f"/workers/{busy}").status == 404  # gone at its commit
    assert platform.api("GET", f"/tasks/{task}").json["info"]["state"] == "Finished"

    forced, forced_token = register(platform)
    running = fetch(platform, forced_token)["uuid"]
    assert platform.api("DELETE", f"/workers/{forced}?op=force").status == 200
    assert platform.api("GET", f"/tasks/{running}").json["info"]["state"] == "Ready"  # handed back
    assert platform.api("DELETE", f"/workers/{forced}?op=sideways").status == 400


def test_batch_and_admin_shutdown(platform: Platform) -> None:
    platform.add_user("pat")
    mine = [register(platform, labels=["batch"])[0] for _ in range(2)]
    other, _ = register(platform, labels=["other"])
    theirs, _ = register(platform, user="pat")
    assert platform.api("POST", "/workers/shutdown", {"labels": ["batch"], "op": "Force"}).json == {"shutdown_count": 2, "group_name": ADMIN[0]}
    assert platform.api("POST", "/workers/shutdown", {"group_name": "pat", "op": "force"}).status == 403
    listed = platform.api("POST", "/workers/shutdown/list", {"uuids": [other, theirs], "op": "graceful"}).json
    assert listed == {"shutdown_count": 1, "failed_uuids": [theirs]}
    assert platform.api("DELETE", f"/workers/{theirs}").status == 403
    assert platform.api("DELETE", f"/admin/workers/{theirs}?op=force").status == 200
    assert platform.api("GET", f"/workers/{theirs}", user="pat").status == 404
    assert all(platform.api("GET", f"/workers/{w}").status == 404 for w in mine)


def test_worker_changes_are_published_to_the_members_of_its_groups(platform: Platform) -> None:
    platform.api("POST", "/groups", {"group_name": "rig"})

    async def scenario() -> list[dict[str, object]]:
        stream = await websocket_connect(f"ws{platform.url[4:]}/events?token={platform.token()}")
        worker, token = await asyncio.to_thread(register, platform, groups=["rig"])
        await asyncio.to_thread(platform.api, "PUT", f"/workers/{worker}/tags", {"tags": ["gpu"]})
        await asyncio.to_thread(http, "POST", f"{platform.url}/workers/heartbeat", token=token)
        await asyncio.to_thread(platform.api, "DELETE", f"/workers/{worker}/groups/remove", {"groups": ["rig"]})
        await asyncio.to_thread(platform.api, "DELETE", f"/workers/{worker}?op=force")
        seen: list[dict[str, object]] = []
        while not seen or seen[-1]["event"] != "removed":
            event = json.loads(await asyncio.wait_for(stream.read_message(), 30))
            if event["kind"] == "worker" and event["worker_id"] == worker:
                seen.append(event)
        stream.close()
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(stream.read_message(), 10) is not None:
                pass
        return seen

    events = asyncio.run(scenario())
    assert [e["event"] for e in events] == ["registered", "changed", "heartbeat", "changed", "removed"]
    assert events[2]["last_heartbeat"]
    assert "rig" in events[3]["groups"]  # the group it just left hears of it too


@pytest.mark.parametrize("backend", ["sqlite-local", "postgres-local"])
def test_a_worker_that_told_its_heartbeat_interval_is_removed_after_five_silent_ones(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    """Far within the heartbeat timeout (10 min here), which still judges a worker registered as
    the reference's are, without an interval."""
    platform = start_platform(tmp_path / "platform", "--heartbeat-timeout", "10m", *backend_args(backend, request))
    try:
        refused = platform.api("POST", "/workers", {"heartbeat_interval": "0s"})
        assert refused.status == 400 and "heartbeat_interval" in refused.json["msg"]
        told, told_token = register(platform, heartbeat_interval="1s")
        unsaid, unsaid_token = register(platform)
        first, second = submit(platform), submit(platform)
        held = {take(platform, told_token)["uuid"]: told, take(platform, unsaid_token)["uuid"]: unsaid}
        assert set(held) == {first, second}

        def state(task: str) -> tuple[str, int]:
            info = platform.api("GET", f"/tasks/{task}").json["info"]
            return info["state"], info["attempts"]

        [lost] = [task for task, worker in held.items() if worker == told]
        wait_until(lambda: state(lost) == ("Ready", 1), "the silent worker's task to be re-queued", timeout=30)
        assert platform.api("GET", f"/workers/{told}").status == 404
        assert platform.api("GET", f"/workers/{unsaid}").json["info"]["assigned_task_id"] in held
        assert state(next(task for task in held if task != lost)) == ("Running", 1)
    finally:
        platform.stop()
