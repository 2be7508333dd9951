"""Access ends when it should (issue 19, SPEC 7): a member removed from a group, locked or deleted
takes her workers' grants with her; a group's Admin can always take their group off a worker or
stop it; chained tasks are checked like a direct submit and a cancelled task chains nothing; a
wrong username costs what a wrong password costs, and repeated failures back off."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Platform, http, start_platform
from mito_lab import Client, MitoRateLimited
from test_dispatch import fetch, register, report, submit
from test_protocol_v2 import exchange

OCTETS = {"Content-Type": "application/octet-stream"}


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout} s")


def task_info(platform: Platform, uuid: str, user: str = "boss") -> dict[str, Any]:
    return platform.api("GET", f"/tasks/{uuid}", user=user).json["info"]


def lab(platform: Platform, **members: str) -> None:
    """Users boss (Admin of group ``lab``) and ``members`` with their roles in it."""
    for name in ("boss", *members):
        platform.add_user(name)
    assert platform.api("POST", "/groups", {"group_name": "lab"}, user="boss").status == 200
    if members:
        assert platform.api("PUT", "/groups/lab/users", {"relations": members}, user="boss").status == 200


def worker_of(platform: Platform, creator: str) -> str:
    """The uuid of the one worker ``creator`` registered that serves ``lab`` (once it has registered)."""
    query = {"group_name": "lab", "creator_username": creator}
    workers = eventually(lambda: platform.api("POST", "/workers/query", query, user="boss").json["workers"], what=f"{creator}'s worker registering")
    assert len(workers) == 1, workers
    return workers[0]["worker_id"]


def running_on(platform: Platform, uuid: str) -> dict[str, Any]:
    """Wait until the task's process runs on a worker."""

    def started() -> dict[str, Any] | None:
        info = task_info(platform, uuid)
        return info if info["state"] == "Running" and info["exec_state"] == "ExecSpawned" else None

    return eventually(started, what=f"task {uuid} starting")


# --- revocation reaches the workers ----------------------------------------------------------------


def test_removing_a_member_takes_her_worker_off_the_group(platform: Platform) -> None:
    lab(platform, alice="Write")
    platform.start_worker("-g", "lab:write", user="alice")
    alices = worker_of(platform, "alice")
    held = submit(platform, "boss", group_name="lab", task_spec={"args": ["sleep", "30"]})
    running_on(platform, held)
    assert platform.api("DELETE", "/groups/lab/users?users=alice", user="boss").status == 200
    # at once: her worker serves the group no more, and the task it held is back in the queue, its attempt not counted
    assert platform.api("GET", f"/workers/{alices}", user="alice").json["groups"] == {"alice": "Admin"}
    requeued = task_info(platform, held)
    assert requeued["state"] == "Ready" and requeued["attempts"] == 0
    # and her worker is told: it stops the task's process now, not when its 30 s are up
    log = platform.home / "worker-0.log"
    stopping = f"task {held}: cancelled, or taken back by the coordinator; stopping it"
    eventually(lambda: stopping in log.read_text(), timeout=15, what="her worker stopping the task")
    eventually(lambda: "the coordinator refused a report (Task 1 not found)" in log.read_text(), what="her report refused")
    waiting = submit(platform, "boss", group_name="lab")
    time.sleep(3)  # her worker polls for tasks all along: it takes none of the group's
    assert task_info(platform, waiting)["state"] == "Ready"
    # another member's worker runs both; hers never reports on the one it lost
    platform.start_worker("-g", "lab:write", user="boss")
    bosss = worker_of(platform, "boss")
    for uuid in (held, waiting):
        ended = platform.wait_task(uuid, timeout=90, user="boss")
        assert ended["state"] == "Finished" and ended["attempts"] == 1 and ended["reporter_uuid"] == bosss, ended


def test_a_removed_members_worker_token_reaches_nothing_of_the_group(platform: Platform) -> None:
    lab(platform, alice="Write")
    token = register(platform, "alice", groups=["lab:write"])  # spoken to as a hostile worker would
    with_artifact = submit(platform, "boss", group_name="lab")
    upload = platform.api("POST", f"/tasks/{with_artifact}/artifacts", {"content_type": "result", "content_length": 4}, user="boss").json
    assert http("PUT", upload["url"], raw=b"data", headers=OCTETS).status == 200
    held = fetch(platform, token)
    assert held is not None and held["spec"]["args"] == ["true"]
    assert http("GET", f"{platform.url}/workers/tasks/{with_artifact}", token=token).status == 200
    assert http("GET", f"{platform.url}/workers/tasks/{with_artifact}/artifacts/result", token=token).status == 200
    assert platform.api("POST", "/groups/lab/users/remove", {"users": ["alice"]}, user="boss").status == 200
    assert http("GET", f"{platform.url}/workers/tasks/{with_artifact}", token=token).status == 403
    assert http("GET", f"{platform.url}/workers/tasks/{with_artifact}/artifacts/result", token=token).status == 403
    assert fetch(platform, token) is None  # a Ready task of the group is there: not for her
    # the task she held is no longer hers: she can neither end it, upload for it nor commit it
    assert report(platform, token, held["id"], "Finish").status == 404
    assert report(platform, token, held["id"], {"Upload": {"content_type": "result", "content_length": 1}}).status == 404
    assert report(platform, token, held["id"], {"Commit": {"exit_status": 0}}).status == 404
    assert task_info(platform, held["uuid"])["state"] == "Ready"


def test_a_member_demoted_to_read_takes_her_worker_off_the_group(platform: Platform) -> None:
    lab(platform, alice="Write")
    token = register(platform, "alice", groups=["lab:write"])
    assert platform.api("PUT", "/groups/lab/users", {"relations": {"alice": "Read"}}, user="boss").status == 200
    submit(platform, "boss", group_name="lab")
    assert fetch(platform, token) is None


@pytest.mark.parametrize("state", ["Locked", "Deleted"])
def test_locking_or_deleting_a_user_shuts_her_workers_down(platform: Platform, state: str) -> None:
    lab(platform, alice="Write")
    worker = platform.start_worker("-g", "lab:write", user="alice")
    worker_of(platform, "alice")
    held = submit(platform, "boss", group_name="lab", task_spec={"args": ["sleep", "30"]})
    running_on(platform, held)
    if state == "Deleted":
        assert platform.api("DELETE", "/admin/users/alice").status == 200
    else:
        assert platform.api("POST", "/admin/users/alice/state", {"state": state}).status == 200
    assert platform.api("POST", "/workers/query", {"group_name": "lab", "count": True}, user="boss").json["count"] == 0
    assert task_info(platform, held)["state"] == "Ready"
    assert worker.wait(30) == 0  # told at its next heartbeat, it killed its task and left
    assert "the coordinator ended this worker" in (platform.home / "worker-0.log").read_text()
    platform.start_worker("-g", "lab:write", user="boss")
    ended = platform.wait_task(held, timeout=90, user="boss")
    assert ended["state"] == "Finished" and ended["attempts"] == 1


def test_a_group_admin_can_always_detach_or_stop_a_worker_serving_the_group(platform: Platform) -> None:
    lab(platform, alice="Write", carol="Write")
    first = platform.api("POST", "/workers", {"groups": ["lab:write"]}, user="alice").json
    second = platform.api("POST", "/workers", {"groups": ["lab:write"]}, user="alice").json
    held = submit(platform, "boss", group_name="lab")
    assert fetch(platform, first["token"])["uuid"] == held
    # a Write member may do neither; boss has no role on alice's personal group, only on his own
    assert platform.api("DELETE", f"/workers/{first['worker_id']}/groups?groups=lab", user="carol").status == 403
    assert platform.api("DELETE", f"/workers/{first['worker_id']}/groups?groups=alice", user="boss").status == 403
    assert platform.api("DELETE", f"/workers/{first['worker_id']}/groups?groups=lab", user="boss").status == 200
    assert platform.api("GET", f"/workers/{first['worker_id']}", user="alice").json["groups"] == {"alice": "Admin"}
    assert task_info(platform, held)["state"] == "Ready"  # what it held of the group went back
    assert platform.api("DELETE", f"/workers/{second['worker_id']}?op=force", user="carol").status == 403
    assert platform.api("DELETE", f"/workers/{second['worker_id']}?op=force", user="boss").status == 200
    assert http("POST", f"{platform.url}/workers/heartbeat", token=second["token"]).status == 401
    assert platform.api("DELETE", f"/workers/{first['worker_id']}?op=force", user="boss").status == 403  # it serves lab no more


def test_revocation_reaches_every_coordinator_at_once(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """Workers' grants are cached by each coordinator, and a user known to one submits with no
    read of the user first: a change made through another must hold before the next request."""
    first = start_platform(tmp_path / "a", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    keys = first.home / "coordinator-data"
    second = start_platform(tmp_path / "b", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules",
                            "--access-token-private-path", str(keys / "private.pem"), "--access-token-public-path", str(keys / "public.pem"))
    try:
        lab(first, alice="Write")
        token = register(first, "alice", groups=["lab:write"])
        seen = submit(first, "boss", group_name="lab")
        assert fetch(second, token)["uuid"] == seen  # the second coordinator knows the worker now
        assert http("GET", f"{second.url}/workers/tasks/{seen}", token=token).status == 200
        alices = first.token("alice", "alice-password")
        by_alice = lambda: http("POST", f"{second.url}/tasks", {"task_spec": {"args": ["true"]}, "group_name": "lab"}, token=alices)  # noqa: E731
        assert by_alice().status == 200  # the second coordinator knows alice now
        assert first.api("DELETE", "/groups/lab/users?users=alice", user="boss").status == 200
        assert by_alice().status == 403
        waiting = submit(first, "boss", group_name="lab")
        assert fetch(second, token) is None
        assert http("GET", f"{second.url}/workers/tasks/{waiting}", token=token).status == 403
        assert task_info(second, seen)["state"] == "Ready"
        own = lambda: http("POST", f"{second.url}/tasks", {"task_spec": {"args": ["true"]}}, token=alices)  # noqa: E731
        assert own().status == 200
        assert first.api("POST", "/admin/users/alice/state", {"state": "Locked"}).status == 200
        assert own().json == {"msg": "Authentication error: Permission denied: user alice is Locked"}
    finally:
        first.stop()
        second.stop()


# --- chained tasks ------------------------------------------------------------------------------------


def chaining(seconds: int, *, before: bool) -> dict[str, Any]:
    """A task that writes a downstream task (labelled ``child``) before or after sleeping."""
    downstream = json.dumps({"task_spec": {"args": ["true"]}, "labels": ["child"]})
    write = f"echo '{downstream}' > \"$MITO_NEW_TASK\""
    steps = [write, f"sleep {seconds}"] if before else [f"sleep {seconds}", write]
    return {"args": ["sh", "-c", "; ".join(steps)]}


def children(platform: Platform) -> int:
    return platform.api("POST", "/tasks/query", {"group_name": "lab", "labels": ["child"], "count": True}, user="boss").json["count"]


def test_a_chained_task_needs_its_creators_write_role_now(platform: Platform) -> None:
    lab(platform, alice="Write")
    platform.start_worker("-g", "lab:write", user="boss")
    upstream = submit(platform, "alice", group_name="lab", task_spec=chaining(4, before=False))
    running_on(platform, upstream)
    assert platform.api("PUT", "/groups/lab/users", {"relations": {"alice": "Read"}}, user="boss").status == 200
    ended = platform.wait_task(upstream, user="boss")
    assert ended["state"] == "Finished" and ended["result"]["msg"] == "SubmitNewTaskFailed"
    assert ended["downstream_task_uuid"] is None and children(platform) == 0
    assert "downstream task refused: Authentication error: Permission denied: user alice may no longer submit to group lab" in (platform.home / "worker-0.log").read_text()


def test_a_cancelled_task_chains_nothing(platform: Platform) -> None:
    lab(platform)
    platform.start_worker("-g", "lab:write", user="boss")
    upstream = submit(platform, "boss", group_name="lab", task_spec=chaining(30, before=True))
    running_on(platform, upstream)
    assert platform.api("DELETE", f"/tasks/{upstream}", user="boss").status == 200
    ended = platform.wait_task(upstream, user="boss")
    assert ended["state"] == "Cancelled" and ended["result"]["msg"] == "UserCancellation"
    assert ended["downstream_task_uuid"] is None and children(platform) == 0


def test_the_coordinator_refuses_a_chain_from_a_cancelled_task_whatever_the_worker_says(platform: Platform) -> None:
    lab(platform)
    token = register(platform, "boss", groups=["lab:write"])
    submit_op = {"Submit": {"task_spec": {"args": ["true"]}, "labels": ["child"]}}
    for outcome in ("Cancel", "Finish"):  # a hostile worker may claim its cancelled task finished
        upstream = submit(platform, "boss", group_name="lab")
        held = fetch(platform, token)
        assert held["uuid"] == upstream
        assert platform.api("DELETE", f"/tasks/{upstream}", user="boss").status == 200  # the user cancels it while it runs
        assert report(platform, token, held["id"], outcome).status == 200
        refused = report(platform, token, held["id"], submit_op)
        assert refused.status == 400 and "it was cancelled" in refused.json["msg"], refused.body
        assert report(platform, token, held["id"], {"Commit": {"exit_status": 0}}).status == 200
    timed_out = submit(platform, "boss", group_name="lab")
    held = fetch(platform, token)
    assert held["uuid"] == timed_out
    assert report(platform, token, held["id"], "Cancel").status == 200  # how a worker reports a timeout
    assert report(platform, token, held["id"], submit_op).status == 400
    assert children(platform) == 0


# --- login -----------------------------------------------------------------------------------------


@dataclass
class Login:
    status: int
    seconds: float
    body: Any
    retry_after: str | None


def login(platform: Platform, username: str, password: str) -> Login:
    request = urllib.request.Request(
        f"{platform.url}/login", json.dumps({"username": username, "password": password}).encode(),
        method="POST", headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return Login(answer.status, time.perf_counter() - started, json.loads(answer.read()), None)
    except urllib.error.HTTPError as error:
        with error:
            return Login(error.code, time.perf_counter() - started, json.loads(error.read()), error.headers.get("Retry-After"))


def test_a_wrong_name_costs_what_a_wrong_password_costs(sqlite_platform: Platform) -> None:
    names = [f"user{index}" for index in range(6)]
    for name in names:
        sqlite_platform.add_user(name)
    known, unknown = [], []
    for index, name in enumerate(names):  # interleaved, one failure per name: no back-off in the way
        failed = login(sqlite_platform, name, "wrong")
        assert failed.status == 401
        known.append(failed.seconds)
        failed = login(sqlite_platform, f"nobody{index}", "wrong")
        assert failed.status == 401 and failed.body == {"msg": "Authentication error: Wrong credentials"}
        unknown.append(failed.seconds)
    # today a real name costs a password hash (~250 ms) and an unknown one nothing (~4 ms)
    assert statistics.median(unknown) > 0.5 * statistics.median(known), (known, unknown)


GUESS = "hunter2-guess"


def test_repeated_failed_logins_back_off(sqlite_platform: Platform) -> None:
    sqlite_platform.add_user("alice")
    for _ in range(5):
        assert login(sqlite_platform, "alice", GUESS).status == 401
    refused = login(sqlite_platform, "alice", GUESS)
    assert refused.status == 429 and refused.retry_after == "1", refused
    assert refused.body["msg"].endswith("retry in 1 s")
    assert login(sqlite_platform, "alice", "alice-password").status == 429  # during the wait, not even the right password
    time.sleep(1.2)
    assert login(sqlite_platform, "alice", "alice-password").status == 200
    assert login(sqlite_platform, "alice", GUESS).status == 401  # a success starts her count again
    for _ in range(5):  # an unknown name backs off as a real one: no tell
        assert login(sqlite_platform, "nobody", GUESS).status == 401
    assert login(sqlite_platform, "nobody", GUESS).status == 429
    # the coordinator's log says so, a line per failure, without the password
    failures = [line for line in sqlite_platform.log.splitlines() if "login failed for 'alice' from 127.0.0.1" in line]
    assert len(failures) == 6 and failures[4].endswith("further attempts refused for 1 s"), failures
    assert GUESS not in sqlite_platform.log


def test_the_cli_and_the_sdk_say_when_to_retry(sqlite_platform: Platform, tmp_path: Path) -> None:
    sqlite_platform.add_user("alice")
    for _ in range(5):
        assert login(sqlite_platform, "alice", GUESS).status == 401
    for wait in (1, 2, 4):  # each failure after a wait doubles the next: 8 s from the last
        time.sleep(wait + 0.2)
        assert login(sqlite_platform, "alice", GUESS).status == 401
    done = sqlite_platform.mito("get", "groups", user="alice", check=False)
    assert done.returncode != 0 and done.stdout == "", done
    assert re.fullmatch(r"error: Authentication error: too many failed logins .*; retry in \d s\n", done.stderr), done.stderr
    with pytest.raises(MitoRateLimited) as refused:
        Client(sqlite_platform.url, "alice", "alice-password", credential_path=tmp_path / "credentials")
    assert refused.value.status == 429 and refused.value.retry_after is not None and str(refused.value).endswith(f"retry in {refused.value.retry_after} s")


def test_one_address_guessing_many_names_backs_off(sqlite_platform: Platform) -> None:
    sqlite_platform.token()  # the admin's session, opened before the address is refused
    for index in range(20):
        assert login(sqlite_platform, f"guess{index}", GUESS).status == 401
    refused = login(sqlite_platform, "a-new-name", GUESS)
    assert refused.status == 429 and refused.retry_after == "1"
    assert sqlite_platform.api("GET", "/groups/mitosis_admin").status == 200  # sessions already open are untouched


def test_failed_logins_are_counted_across_coordinators_sharing_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    second = start_platform(tmp_path / "b", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    try:
        first.add_user("alice")
        for platform in (first, second, first, second, first):
            assert login(platform, "alice", GUESS).status == 401
        assert login(second, "alice", GUESS).status == 429
    finally:
        first.stop()
        second.stop()


def test_a_task_for_a_waiting_worker_that_lost_the_group_goes_to_a_worker_waiting_behind_it(platform: Platform) -> None:
    """A worker long-polling as its group is taken away still waits with what it was allowed when it
    began: the task submitted then, handed to the longest-waiting worker that seems to serve the
    group, is not its (the claim's rules apply as the task is created); the group's worker waiting
    behind it gets it."""
    lab(platform, alice="Write")
    alices, bosss = register(platform, user="alice", groups=["lab"]), register(platform, user="boss", groups=["lab"])
    found: dict[str, Any] = {}
    waiting = {}
    for name, token, wait in (("alice", alices, 8), ("boss", bosss, 60)):
        waiting[name] = threading.Thread(target=lambda name=name, token=token, wait=wait: found.update({name: exchange(platform, token, wait=wait, want=1)["tasks"]}))
        waiting[name].start()
        time.sleep(0.3)  # in this order
    assert platform.api("DELETE", "/groups/lab/users?users=alice", user="boss").status == 200
    task = submit(platform, "boss", group_name="lab")
    waiting["boss"].join(timeout=30)
    assert [t["uuid"] for t in found["boss"]] == [task]
    info = task_info(platform, task)
    assert info["state"] == "Running" and info["attempts"] == 1
    waiting["alice"].join(timeout=30)
    assert found["alice"] == []  # her poll ran out with nothing
