"""Running-task cancellation, bounded retries, exec states, the event stream and watch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tornado.websocket import websocket_connect

from conftest import Platform, http, start_platform
from mito_lab.testing import wait_until as wait_for
from test_dispatch import fetch, register, report, submit


def processes_with(marker: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()


def test_heartbeat_long_poll_carries_a_cancellation(platform: Platform) -> None:
    task = submit(platform)
    token = register(platform)
    work = fetch(platform, token)
    signals: list[Any] = []
    waiter = threading.Thread(target=lambda: signals.append(http("POST", f"{platform.url}/workers/heartbeat?wait=60", token=token).json))
    waiter.start()
    time.sleep(0.3)
    assert platform.api("DELETE", f"/tasks/{task}").status == 200
    waiter.join(30)  # held for up to 60 s: returning here means the cancellation woke it
    assert not waiter.is_alive() and signals == [{"cancel": [task]}]
    assert platform.api("GET", f"/tasks/{task}").json["info"]["cancel_requested"] is True
    assert http("POST", f"{platform.url}/workers/heartbeat", token=token).body == b"null"  # plain heartbeats are unchanged
    report(platform, token, work["id"], "Cancel")
    report(platform, token, work["id"], {"Commit": {"exit_status": -15, "msg": "UserCancellation"}})
    assert platform.api("GET", f"/tasks/{task}").json["info"]["result"] == {"exit_status": -15, "msg": "UserCancellation"}


def test_lost_workers_requeue_a_task_at_most_max_attempts_times(platform: Platform) -> None:
    task = submit(platform, max_attempts=2)
    for attempt in (1, 2):
        token = register(platform)
        assert fetch(platform, token)["uuid"] == task
        assert platform.api("GET", f"/tasks/{task}").json["info"]["attempts"] == attempt
        http("DELETE", f"{platform.url}/workers", token=token)  # the worker is lost mid-task
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert info["state"] == "Cancelled" and info["result"] == {"exit_status": 0, "msg": "AttemptsExhausted"}
    assert fetch(platform, register(platform)) is None
    # a cancelled task whose worker vanishes ends cancelled instead of running again
    other = submit(platform)
    token = register(platform)
    fetch(platform, token)
    platform.api("DELETE", f"/tasks/{other}")
    http("DELETE", f"{platform.url}/workers", token=token)
    assert platform.api("GET", f"/tasks/{other}").json["info"]["result"]["msg"] == "UserCancellation"


def test_cancelling_a_running_task_kills_its_whole_process_group(platform: Platform) -> None:
    platform.start_worker()
    marker = f"mito-grandchild-{secrets.token_hex(4)}"
    script = f"python3 -c 'import time; time.sleep(600)' {marker} & wait"
    task = submit(platform, task_spec={"args": ["sh", "-c", script]})
    wait_for(lambda: processes_with(marker), "the grandchild process to start")
    assert platform.api("DELETE", f"/tasks/{task}").status == 200
    info = platform.wait_task(task, timeout=30)
    assert info["state"] == "Cancelled"
    assert info["result"] == {"exit_status": -15, "msg": "UserCancellation"}
    assert processes_with(marker) == []


def test_exec_states_stream_over_the_websocket_to_members_only(platform: Platform) -> None:
    platform.add_user("rex")
    platform.start_worker()

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
        mine = await websocket_connect(f"ws{platform.url[4:]}/events?token={platform.token()}")
        batched = await websocket_connect(f"ws{platform.url[4:]}/events?batch=1&token={platform.token()}")
        theirs = await websocket_connect(f"ws{platform.url[4:]}/events?token={platform.token('rex', 'rex-password')}")
        task = await asyncio.to_thread(submit, platform, task_spec={"args": ["true"]})
        seen: list[dict[str, Any]] = []
        while not any(e.get("uuid") == task and e.get("archived") for e in seen):
            seen.append(json.loads(await asyncio.wait_for(mine.read_message(), 30)))
        batches: list[Any] = []  # the same events, as arrays of those that waited
        while not any(e.get("uuid") == task and e.get("archived") for batch in batches for e in batch):
            batches.append(json.loads(await asyncio.wait_for(batched.read_message(), 30)))
        leaked: list[dict[str, Any]] = []
        try:
            while True:
                leaked.append(json.loads(await asyncio.wait_for(theirs.read_message(), 0.5)))
        except TimeoutError:
            pass
        for connection in (mine, batched, theirs):  # close and wait for the handshake, so no socket is left behind
            connection.close()
            with contextlib.suppress(TimeoutError):
                while await asyncio.wait_for(connection.read_message(), 10) is not None:
                    pass
        return [e for e in seen if e.get("uuid") == task], [e for e in leaked if e.get("kind") == "task"], batches

    events, leaked, batches = asyncio.run(scenario())
    assert all(isinstance(batch, list) and batch for batch in batches)
    assert [e for batch in batches for e in batch if e.get("uuid") == events[0]["uuid"]] == events
    states = [e["state"] for e in events]
    assert states[0] == "Ready" and "Running" in states and states[-1] == "Finished"
    reported = [e["exec_state"] for e in events]
    # transitions only: other events repeat the current exec state
    exec_states = [state for state, previous in zip(reported, [None, *reported[:-1]], strict=True) if state and state != previous]
    assert exec_states[:2] == ["ExecPending", "ExecSpawned"] and exec_states[-1] == "TaskCommitted"
    assert {"ExecFinished", "UploadResult", "UploadFinishedResult", "UploadResultFinished"} <= set(exec_states)
    assert leaked == []  # rex is not in the admin's group
    running = next(e for e in events if e["state"] == "Running")
    assert running["worker"] and running["started_at"] and running["ended_at"] is None
    assert events[-1]["ended_at"] >= running["started_at"]
    info = platform.api("GET", f"/tasks/{events[0]['uuid']}").json["info"]
    assert info["started_at"] == running["started_at"] and info["ended_at"] == events[-1]["ended_at"]
    rejected = http("GET", f"{platform.url}/events", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert rejected.status == 401


def test_watch_starts_a_task_when_another_reaches_a_state(platform: Platform) -> None:
    platform.start_worker()
    platform.start_worker()
    gate = platform.home / "gate"  # the server task runs until the test opens the gate
    server = submit(platform, task_spec={"args": ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.1; done']})
    client = submit(platform, task_spec={"args": ["true"], "watch": [server, "ExecSpawned"]})
    client_info = platform.wait_task(client)  # it ran while the server task was running
    assert client_info["result"] == {"exit_status": 0, "msg": None}
    assert platform.api("GET", f"/tasks/{server}").json["info"]["state"] == "Running"
    gate.touch()
    assert platform.wait_task(server)["result"] == {"exit_status": 0, "msg": None}
    # a state the watched task can no longer reach ends the watcher early
    quick = submit(platform, task_spec={"args": ["true"]})
    platform.wait_task(quick)
    hopeless = submit(platform, task_spec={"args": ["true"], "watch": [quick, "ExecTimeout"]})
    assert platform.wait_task(hopeless)["result"] == {"exit_status": 0, "msg": "WatchTimeout"}


def test_two_coordinators_share_one_database_without_double_dispatch(tmp_path: Path, pg_url: str) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url)
    second = start_platform(tmp_path / "b", "--db", pg_url)
    try:
        for platform in (first, second, first, second):
            platform.start_worker("--polling-interval", "5s")
        ledger = tmp_path / "ledger"  # each run adds its task's uuid (one short append: never torn)
        task = {"task_spec": {"args": ["sh", "-c", f'echo "$MITO_TASK_UUID" >> {ledger}']}, "labels": ["load"]}
        body = {"tasks": [task] * 300}
        results = first.api("POST", "/tasks/submit", body).json["results"]
        uuids = [r["Ok"]["uuid"] for r in results]
        wait_for(lambda: first.api("POST", "/tasks/query", {"labels": ["load"], "states": ["Finished"], "count": True}).json["count"] == 300
                 and first.api("POST", "/tasks/query", {"labels": ["load"], "exit_status": "=0", "count": True}).json["count"] == 300,
                 "300 tasks to finish", timeout=120)
        tasks = first.api("POST", "/tasks/query", {"labels": ["load"]}).json["tasks"]
        assert {t["uuid"] for t in tasks} == set(uuids)
        assert all(t["attempts"] == 1 for t in tasks)  # each was handed out exactly once
        assert sorted(ledger.read_text().split()) == sorted(uuids)  # every task ran once, on one worker
        assert len({t["reporter_uuid"] for t in tasks}) >= 2
    finally:
        first.stop()
        second.stop()


def test_watch_across_two_coordinators_with_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    second = start_platform(tmp_path / "b", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    try:
        first.start_worker("--tags", "server")
        second.start_worker("--tags", "client")
        gate = tmp_path / "gate"
        server = submit(first, tags=["server"], task_spec={"args": ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.1; done']})
        client = submit(second, tags=["client"], task_spec={"args": ["true"], "watch": [server, "ExecSpawned"]})
        spawned = lambda: first.api("GET", f"/tasks/{server}").json["info"]["exec_state"] == "ExecSpawned"  # noqa: E731
        wait_for(spawned, "the watched task to start on the first coordinator's worker", timeout=60)
        assert second.wait_task(client)["result"] == {"exit_status": 0, "msg": None}
        assert first.api("GET", f"/tasks/{server}").json["info"]["state"] == "Running"
        gate.touch()
        assert first.wait_task(server)["result"] == {"exit_status": 0, "msg": None}
    finally:
        first.stop()
        second.stop()
