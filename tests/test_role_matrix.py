"""Every endpoint against every kind of caller (SPEC 4.5, reference 6.5): group members by role,
outsiders, the system administrator, worker tokens, no token, expired and forged tokens."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import Platform, http, start_platform
from mito_lab.server.app import Coordinator

OCTETS = {"Content-Type": "application/octet-stream"}
MEMBERS = {"owner": "Admin", "boss": "Admin", "writer": "Write", "reader": "Read"}
HOOK, HOOK_SECRET = "http://127.0.0.1:9/hook", "a-webhook-secret-of-the-matrix"
RANK = {"Read": 0, "Write": 1, "Admin": 2}


@dataclass
class World:
    """One group with members, a Ready task carrying an artifact, an attachment and a worker."""

    group: str
    task: str
    spare_task: str
    worker: str
    worker_token: str
    alert: int


@dataclass
class Callers:
    tokens: dict[str, str | None]


@pytest.fixture
def matrix(tmp_path: Path) -> Iterator[tuple[Platform, Callers]]:
    """A coordinator of its own, the members of every world, and each kind of caller's token."""
    platform = start_platform(tmp_path / "platform")
    try:
        for name in (*MEMBERS, "outsider"):
            platform.add_user(name)
        assert platform.api("POST", "/admin/users/owner/group-quota", {"group_quota": "1000"}).status == 200  # a world per endpoint
        private = serialization.load_pem_private_key((platform.home / "coordinator-data" / "private.pem").read_bytes(), None)
        tokens: dict[str, str | None] = {name: platform.token(name, f"{name}-password") for name in (*MEMBERS, "outsider")}
        claims = jwt.decode(tokens["owner"], options={"verify_signature": False})  # the owner's real signature: only expiry or key refuse these
        expired = jwt.encode({**claims, "exp": int(time.time()) - 3600}, private, "EdDSA")
        forged = jwt.encode({**claims, "exp": int(time.time()) + 3600}, Ed25519PrivateKey.generate(), "EdDSA")
        tokens.update(sysadmin=platform.token(), no_token=None, expired=expired, forged=forged)
        yield platform, Callers(tokens)
    finally:
        platform.stop()


def make_world(platform: Platform, index: int) -> World:
    group = f"lab{index}"
    assert platform.api("POST", "/groups", {"group_name": group}, user="owner").status == 200
    relations = {name: role for name, role in MEMBERS.items() if name != "owner"}
    assert platform.api("PUT", f"/groups/{group}/users", {"relations": relations}, user="owner").status == 200
    submit = {"group_name": group, "task_spec": {"args": ["true"]}}
    task = platform.api("POST", "/tasks", submit, user="owner").json["uuid"]
    spare = platform.api("POST", "/tasks", submit, user="owner").json["uuid"]
    upload = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": 1}, user="owner").json
    http("PUT", upload["url"], raw=b"x", headers=OCTETS)
    upload = platform.api("POST", f"/groups/{group}/attachments", {"key": "data.txt", "content_length": 1}, user="owner").json
    http("PUT", upload["url"], raw=b"x", headers=OCTETS)
    worker = platform.api("POST", "/workers", {"groups": [f"{group}:admin"]}, user="owner").json
    # reading them records the uploads (they commit on completion), then they can be made old
    assert [a["content_type"] for a in platform.api("GET", f"/tasks/{task}", user="owner").json["artifacts"]] == ["result"]
    assert platform.api("GET", f"/groups/{group}/attachments/data.txt", user="owner").status == 200
    alert = platform.api("POST", "/alerts", {"group_name": group, "label": "none", "url": HOOK, "secret": HOOK_SECRET}, user="owner").json
    backdate(platform)
    return World(group, task, spare, worker["worker_id"], worker["token"], alert["id"])


def backdate(platform: Platform) -> None:
    """Make everything two hours old: an allowed delete must then delete, not meet the hour during
    which new objects are kept from non-administrators (reference 2.3, 2.4)."""
    with contextlib.closing(sqlite3.connect(platform.home / "coordinator-data" / "mitosis.db")) as database, database:
        for table in ("tasks", "artifacts", "attachments"):
            database.execute(f"UPDATE {table} SET created_at = datetime(created_at, '-2 hours'), updated_at = datetime(updated_at, '-2 hours')")


Endpoint = Callable[[World], tuple[str, str, Any]]

# (minimum role in the group, endpoint)
GROUP_ENDPOINTS: list[tuple[str, Endpoint]] = [
    ("Read", lambda w: ("GET", f"/groups/{w.group}", None)),
    ("Read", lambda w: ("GET", f"/tasks/{w.task}", None)),
    ("Read", lambda w: ("GET", f"/tasks/{w.task}/why", None)),
    ("Read", lambda w: ("POST", "/tasks/query", {"group_name": w.group})),
    ("Read", lambda w: ("POST", "/tasks/query/columns", {"group_name": w.group})),
    ("Read", lambda w: ("GET", f"/tasks/{w.task}/download/artifacts/result", None)),
    ("Read", lambda w: ("GET", f"/tasks/{w.task}/logs", None)),
    ("Read", lambda w: ("POST", "/tasks/download/artifacts", {"group_name": w.group, "content_type": "result"})),
    ("Read", lambda w: ("GET", f"/groups/{w.group}/attachments/data.txt", None)),
    ("Read", lambda w: ("GET", f"/groups/{w.group}/download/attachments/data.txt", None)),
    ("Read", lambda w: ("POST", f"/groups/{w.group}/attachments/query", {})),
    ("Read", lambda w: ("POST", f"/groups/{w.group}/download/attachments", {})),
    ("Read", lambda w: ("POST", f"/groups/{w.group}/download/attachments/list", {"keys": ["data.txt"]})),
    ("Read", lambda w: ("GET", f"/workers/{w.worker}", None)),
    ("Read", lambda w: ("POST", "/workers/query", {"group_name": w.group})),
    ("Read", lambda w: ("GET", f"/alerts?group={w.group}", None)),
    ("Write", lambda w: ("POST", "/tasks", {"group_name": w.group, "task_spec": {"args": ["true"]}})),
    ("Write", lambda w: ("PUT", f"/tasks/{w.task}", {"priority": 3})),
    ("Write", lambda w: ("PUT", f"/tasks/{w.task}/labels", {"labels": ["x"]})),
    ("Write", lambda w: ("DELETE", f"/tasks/{w.spare_task}", None)),
    ("Write", lambda w: ("POST", "/tasks/cancel", {"group_name": w.group, "labels": ["none-match"]})),
    ("Write", lambda w: ("POST", f"/tasks/{w.task}/artifacts", {"content_type": "exec-log", "content_length": 1})),
    ("Write", lambda w: ("DELETE", f"/tasks/{w.task}/artifacts/result", None)),
    ("Write", lambda w: ("POST", "/tasks/delete/artifacts", {"group_name": w.group, "content_type": "result"})),
    ("Write", lambda w: ("POST", f"/groups/{w.group}/attachments", {"key": "new.txt", "content_length": 1})),
    ("Write", lambda w: ("DELETE", f"/groups/{w.group}/attachments/data.txt", None)),
    ("Write", lambda w: ("POST", f"/groups/{w.group}/delete/attachments", {})),
    ("Write", lambda w: ("POST", f"/groups/{w.group}/delete/attachments/list", {"keys": ["data.txt"]})),
    ("Write", lambda w: ("PUT", f"/workers/{w.worker}/tags", {"tags": ["t"]})),
    ("Write", lambda w: ("PUT", f"/workers/{w.worker}/labels", {"labels": ["l"]})),
    ("Write", lambda w: ("POST", "/alerts", {"group_name": w.group, "label": "made", "url": HOOK, "secret": HOOK_SECRET})),
    ("Write", lambda w: ("DELETE", f"/alerts/{w.alert}", None)),
    ("Admin", lambda w: ("PUT", f"/groups/{w.group}/users", {"relations": {"outsider": "Read"}})),
    ("Admin", lambda w: ("DELETE", f"/groups/{w.group}/users?users=outsider", None)),
    ("Admin", lambda w: ("POST", f"/groups/{w.group}/users/remove", {"users": ["outsider"]})),
    ("Admin", lambda w: ("PUT", f"/workers/{w.worker}/groups", {"relations": {w.group: "Admin"}})),
    ("Admin", lambda w: ("DELETE", f"/workers/{w.worker}/groups?groups={w.group}-none", None)),
    ("Admin", lambda w: ("POST", "/workers/shutdown", {"group_name": w.group, "op": "Graceful", "labels": ["none-match"]})),
    ("Admin", lambda w: ("DELETE", f"/workers/{w.worker}", None)),
]

ReadBack = Callable[[Platform, World, Any], bool]


def _task(platform: Platform, task: str) -> Any:
    return platform.api("GET", f"/tasks/{task}", user="owner")


def _worker(platform: Platform, world: World) -> Any:
    return platform.api("GET", f"/workers/{world.worker}", user="owner").json


def _members(platform: Platform, world: World) -> dict[str, str]:
    return platform.api("GET", f"/groups/{world.group}", user="owner").json["users_in_group"]


def _alerts(platform: Platform, world: World) -> dict[int, str]:
    return {a["id"]: a["label"] for a in platform.api("GET", f"/alerts?group={world.group}", user="owner").json["alerts"]}


def _attachments(platform: Platform, world: World) -> list[str]:
    return [a["key"] for a in platform.api("POST", f"/groups/{world.group}/attachments/query", {}, user="owner").json["attachments"]]


# What an allowed call changed, read back by the group's owner (routes that change nothing are
# checked by their answer): an allowed call that answered 200 and did nothing fails here.
READ_BACK: dict[tuple[str, str], ReadBack] = {
    ("POST", "/tasks"): lambda p, w, a: _task(p, a.json["uuid"]).json["info"]["group_name"] == w.group,
    ("PUT", "/tasks/{task}"): lambda p, w, a: _task(p, w.task).json["info"]["priority"] == 3,
    ("PUT", "/tasks/{task}/labels"): lambda p, w, a: _task(p, w.task).json["info"]["labels"] == ["x"],
    ("DELETE", "/tasks/{spare}"): lambda p, w, a: _task(p, w.spare_task).json["info"]["state"] == "Cancelled",  # cancels a Ready task
    ("POST", "/tasks/cancel"): lambda p, w, a: a.json["cancelled_count"] == 0 and _task(p, w.task).json["info"]["state"] == "Ready",
    ("DELETE", "/tasks/{task}/artifacts/result"): lambda p, w, a: "result" not in {x["content_type"] for x in _task(p, w.task).json["artifacts"]},
    ("POST", "/tasks/delete/artifacts"): lambda p, w, a: "result" not in {x["content_type"] for x in _task(p, w.task).json["artifacts"]},
    ("DELETE", "/groups/{group}/attachments/data.txt"): lambda p, w, a: "data.txt" not in _attachments(p, w),
    ("POST", "/groups/{group}/delete/attachments"): lambda p, w, a: _attachments(p, w) == [],
    ("POST", "/groups/{group}/delete/attachments/list"): lambda p, w, a: "data.txt" not in _attachments(p, w),
    ("PUT", "/workers/{worker}/tags"): lambda p, w, a: _worker(p, w)["info"]["tags"] == ["t"],
    ("PUT", "/workers/{worker}/labels"): lambda p, w, a: _worker(p, w)["info"]["labels"] == ["l"],
    ("PUT", "/groups/{group}/users"): lambda p, w, a: _members(p, w).get("outsider") == "Read",
    ("DELETE", "/groups/{group}/users"): lambda p, w, a: "outsider" not in _members(p, w),
    ("POST", "/groups/{group}/users/remove"): lambda p, w, a: "outsider" not in _members(p, w),
    ("PUT", "/workers/{worker}/groups"): lambda p, w, a: _worker(p, w)["groups"].get(w.group) == "Admin",
    ("DELETE", "/workers/{worker}/groups"): lambda p, w, a: _worker(p, w)["groups"].get(w.group) is not None,  # only an unknown group named
    ("POST", "/workers/shutdown"): lambda p, w, a: _worker(p, w)["info"]["state"] == "Normal",  # no worker matched its labels
    ("DELETE", "/workers/{worker}"): lambda p, w, a: p.api("GET", f"/workers/{w.worker}", user="owner").status == 404,
    ("POST", "/alerts"): lambda p, w, a: _alerts(p, w).get(a.json["id"]) == "made",
    ("DELETE", "/alerts/{alert}"): lambda p, w, a: w.alert not in _alerts(p, w),
}


def route_of(world: World, endpoint: tuple[str, str, Any]) -> tuple[str, str]:
    method, path, _ = endpoint
    path = path.split("?")[0].replace(world.spare_task, "{spare}").replace(world.task, "{task}").replace(world.worker, "{worker}")
    path = path.replace(f"/alerts/{world.alert}", "/alerts/{alert}")
    return method, re.sub(rf"/{re.escape(world.group)}(?=/|$)", "/{group}", path)


# Lists silently leave out what the caller may not touch: an outsider gets an empty answer, not a 403.
LIST_ENDPOINTS: list[tuple[str, Endpoint, Callable[[Any], bool]]] = [
    ("Write", lambda w: ("POST", "/tasks/cancel/list", {"uuids": [w.spare_task]}), lambda body: body["cancelled_count"] == 0),
    ("Read", lambda w: ("POST", "/tasks/download/artifacts/list", {"uuids": [w.task], "content_type": "result"}), lambda body: body["downloads"] == []),
    ("Write", lambda w: ("POST", "/tasks/delete/artifacts/list", {"uuids": [w.task], "content_type": "result"}), lambda body: body["deleted_count"] == 0),
    ("Admin", lambda w: ("POST", "/workers/shutdown/list", {"uuids": [w.worker], "op": "Force"}), lambda body: body["shutdown_count"] == 0),
    ("Write", lambda w: ("POST", "/tasks/submit", {"tasks": [{"group_name": w.group, "task_spec": {"args": ["true"]}}]}),
     lambda body: [item["Ok"] for item in body["results"]] == [None]),  # a batch answers 200 and refuses each item
]


def expected(caller: str, minimum: str) -> str:
    if caller in ("no_token", "expired", "forged"):
        return "401"
    if caller in MEMBERS and RANK[MEMBERS[caller]] >= RANK[minimum]:
        return "allowed"
    return "403"  # outsiders, lower roles, and the system administrator outside /admin


def call(platform: Platform, token: str | None, endpoint: tuple[str, str, Any]) -> Any:
    method, path, body = endpoint
    return http(method, platform.url + path, body, token=token)


def ordered(callers: Callers, minimum: str) -> list[str]:
    """Denied callers first: allowed calls may change what later calls find."""
    return sorted(callers.tokens, key=lambda name: expected(name, minimum) == "allowed")


def test_group_endpoint_roles(matrix: tuple[Platform, Callers]) -> None:
    platform, callers = matrix
    for index, (minimum, endpoint) in enumerate(GROUP_ENDPOINTS):
        world = make_world(platform, index)  # a fresh group for each endpoint
        for caller in ordered(callers, minimum):
            answer = call(platform, callers.tokens[caller], endpoint(world))
            outcome = expected(caller, minimum)
            where = f"{caller} on {endpoint(world)[:2]}: {answer.status} {answer.body[:200]!r}"
            if outcome == "allowed":
                assert answer.status not in (401, 403) and answer.status < 500, where
                read_back = READ_BACK.get(route_of(world, endpoint(world)))
                assert read_back is None or read_back(platform, world, answer), f"{where}: not what it should have changed"
            else:
                assert answer.status == int(outcome), where
        # a worker's own token opens no user route
        assert call(platform, world.worker_token, endpoint(world)).status == 401, endpoint(world)[:2]


def test_list_endpoints_skip_what_the_caller_may_not_touch(matrix: tuple[Platform, Callers]) -> None:
    platform, callers = matrix
    for index, (minimum, endpoint, untouched) in enumerate(LIST_ENDPOINTS):
        world = make_world(platform, index)
        touched = False
        for caller in ordered(callers, minimum):
            answer = call(platform, callers.tokens[caller], endpoint(world))
            outcome = expected(caller, minimum)
            where = (caller, endpoint(world)[:2], answer.body[:200])
            if outcome == "401":
                assert answer.status == 401, where
            elif outcome == "403":
                assert answer.status == 200 and untouched(answer.json), where
            else:  # the first allowed caller finds the world as made, and does what the route does
                assert answer.status == 200 and (touched or not untouched(answer.json)), where
                touched = True


ADMIN_ENDPOINTS: list[Endpoint] = [
    lambda w: ("POST", "/admin/users", {"username": f"made-{w.group}", "password": "x"}),
    lambda w: ("POST", "/admin/users/reader/state", {"state": "Active"}),
    lambda w: ("POST", "/admin/users/outsider/group-quota", {"group_quota": "+0"}),
    lambda w: ("POST", f"/admin/groups/{w.group}/storage-quota", {"storage_quota": "+0"}),
    lambda w: ("DELETE", f"/admin/groups/{w.group}/attachments/data.txt", None),
    lambda w: ("DELETE", f"/admin/tasks/{w.task}/artifacts/result", None),
    lambda w: ("DELETE", f"/admin/workers/{w.worker}?op=force", None),
    lambda w: ("POST", "/admin/users/nobody/password", {"new_md5_password": [0] * 16}),
    lambda w: ("DELETE", "/admin/users/nobody", None),
    lambda w: ("POST", "/admin/shutdown", {"secret": "wrong"}),
]


def test_admin_endpoints_are_for_the_system_administrator_only(matrix: tuple[Platform, Callers]) -> None:
    platform, callers = matrix
    for index, endpoint in enumerate(ADMIN_ENDPOINTS):
        world = make_world(platform, index)
        for caller in sorted(callers.tokens, key=lambda name: name == "sysadmin"):
            answer = call(platform, callers.tokens[caller], endpoint(world))
            where = (caller, endpoint(world)[:2], answer.body[:200])
            if caller == "sysadmin":
                # allowed; the wrong shutdown secret and the unknown user are still refused on their merits
                assert answer.status in (200, 403, 404), where
                assert answer.status != 403 or b"secret" in answer.body, where
            else:
                assert answer.status == (401 if caller in ("no_token", "expired", "forged") else 403), where


def test_worker_routes_take_only_worker_tokens_of_the_right_groups(matrix: tuple[Platform, Callers]) -> None:
    platform, callers = matrix
    world = make_world(platform, 0)
    stranger = http("POST", f"{platform.url}/workers", {"groups": []}, token=callers.tokens["outsider"]).json["token"]
    routes = [
        ("POST", "/workers/heartbeat", None),
        ("GET", "/workers/tasks", None),
        ("POST", "/workers/tasks", {"id": 1, "op": "Finish"}),
        ("GET", f"/workers/tasks/{world.task}", None),
        ("GET", f"/workers/tasks/{world.task}/artifacts/result", None),
        ("GET", f"/workers/tasks/{world.task}/attachments/data.txt", None),
        ("GET", f"/workers/tasks/{world.task}/reaches/ExecSpawned", None),
        ("DELETE", "/workers", None),
    ]
    for route in routes:
        for caller, token in callers.tokens.items():
            assert call(platform, token, route).status == 401, (caller, route)
    # a worker of another group sees nothing of this one
    for route in routes[3:7]:
        assert call(platform, stranger, route).status == 403, route
    assert call(platform, world.worker_token, routes[3]).status == 200
    assert call(platform, world.worker_token, routes[4]).status == 200
    assert call(platform, world.worker_token, routes[5]).status == 403  # not the task it is running
    assert call(platform, world.worker_token, ("DELETE", "/workers", None)).status == 200
    assert call(platform, world.worker_token, routes[0]).status == 401  # unregistered: its token is dead


def test_tasks_cannot_reach_into_groups_their_creator_cannot_read(matrix: tuple[Platform, Callers]) -> None:
    """A worker serving two groups must not carry one group's artifacts or exec states to a task of
    the other: referring to a task (an artifact resource, a watch) needs Read in its group."""
    platform, _ = matrix
    world = make_world(platform, 0)  # the outsider is in none of its groups
    platform.api("POST", "/groups", {"group_name": "outside"}, user="outsider")
    steal = {"remote_file": {"Artifact": {"uuid": world.task, "content_type": "result"}}, "local_path": "loot.tgz"}
    specs = [{"args": ["true"], "resources": [steal]}, {"args": ["true"], "watch": [world.task, "ExecSpawned"]}]
    for spec in specs:
        refused = platform.api("POST", "/tasks", {"group_name": "outside", "task_spec": spec}, user="outsider")
        assert refused.status == 403 and "lab0" in refused.json["msg"], refused.body
        assert platform.api("POST", "/tasks", {"group_name": world.group, "task_spec": spec}, user="writer").status == 200  # a member may
    batch = {"tasks": [{"group_name": "outside", "task_spec": spec} for spec in [{"args": ["true"]}, *specs]]}
    results = platform.api("POST", "/tasks/submit", batch, user="outsider").json["results"]
    assert results[0]["Ok"] and [r["Err"]["msg"] for r in results[1:]] == ["Authentication error: Permission denied: the task refers to a task of group lab0, which you cannot read"] * 2
    harmless = results[0]["Ok"]["uuid"]
    changed = platform.api("PUT", f"/tasks/{harmless}", {"task_spec": specs[0]}, user="outsider")
    assert changed.status == 403
    assert platform.api("GET", f"/tasks/{harmless}", user="outsider").json["info"]["spec"]["resources"] == []


def test_every_user_route_is_in_the_matrix() -> None:
    """A new route must be added to this matrix (or to the list of routes every user may call)."""
    open_to_every_user = {
        ("POST", "/groups"), ("GET", "/users/groups"), ("POST", "/users/{username}/password"), ("GET", "/auth"),
        ("GET", "/redis"), ("POST", "/workers"), ("GET", "/groups/{group}/download/attachments/list"),
        ("POST", "/groups/{group}/attachments/query"), ("DELETE", "/workers/{worker_uuid}/groups/remove"),
        ("POST", "/login"), ("GET", "/health"),
    }
    world = World("G", "T", "S", "W", "", 0)
    covered = set()
    for endpoint in [e for _, e in GROUP_ENDPOINTS] + [e for _, e, _ in LIST_ENDPOINTS] + ADMIN_ENDPOINTS:
        method, path, _ = endpoint(world)
        covered.add((method, path.split("?")[0]))
    for pattern, handler in Coordinator.routes():
        if pattern.startswith(("/blobs/", "/workers/tasks", "/workers/heartbeat", "/events", "/openapi")) or pattern == "/workers":
            continue
        for method in ("get", "post", "put", "delete"):
            operation = getattr(vars(handler).get(method), "operation", None)
            if operation is None or operation.auth == "worker":
                continue
            template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
            concrete = (template.replace("{group}", "G").replace("{task_uuid}", "T").replace("{worker_uuid}", "W")
                        .replace("{key}", "data.txt").replace("{kind}", "result").replace("{username}", "reader"))
            found = (method.upper(), concrete) in covered or (method.upper(), template) in open_to_every_user or any(
                m == method.upper() and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), p) for m, p in covered
            )
            assert found, f"{method.upper()} {template} has no row in the role matrix"
