"""The HTTP API of this slice, status codes and bodies, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import ADMIN, Platform, http

ECHO = {"task_spec": {"args": ["echo", "hi"]}}


def test_health_and_unknown_route(platform: Platform) -> None:
    assert http("GET", f"{platform.url}/health").json == {"status": "ok"}
    missing = http("GET", f"{platform.url}/no/such/route")
    assert missing.status == 404 and "msg" in missing.json


def test_login_accepts_md5_digest_and_plain_password(platform: Platform) -> None:
    digest = list(hashlib.md5(ADMIN[1].encode()).digest())
    by_digest = http("POST", f"{platform.url}/login", {"username": ADMIN[0], "md5_password": digest})
    assert by_digest.status == 200
    auth = http("GET", f"{platform.url}/auth", token=by_digest.json["token"])
    assert auth.status == 200 and auth.body.decode() == ADMIN[0]
    # reference clients send base64 of the JWT
    wrapped = base64.b64encode(by_digest.json["token"].encode()).decode()
    assert http("GET", f"{platform.url}/auth", token=wrapped).body.decode() == ADMIN[0]

    by_password = http("POST", f"{platform.url}/login", {"username": ADMIN[0], "password": ADMIN[1]})
    assert by_password.status == 200
    # a login without retain rotates the signature: the earlier token stops working
    assert http("GET", f"{platform.url}/auth", token=by_digest.json["token"]).status == 401


def test_login_errors(platform: Platform) -> None:
    wrong = http("POST", f"{platform.url}/login", {"username": ADMIN[0], "password": "nope"})
    assert wrong.status == 401 and wrong.json == {"msg": "Authentication error: Wrong credentials"}
    unknown = http("POST", f"{platform.url}/login", {"username": "ghost", "password": "x"})
    assert unknown.status == 401
    both = http("POST", f"{platform.url}/login", {"username": ADMIN[0], "password": "x", "md5_password": [0] * 16})
    assert both.status == 400 and "exactly one" in both.json["msg"]
    malformed = http("POST", f"{platform.url}/login", raw=b"{not json")
    assert malformed.status == 400 and malformed.json["msg"].startswith("Process request error")


def test_bad_tokens_are_rejected(platform: Platform) -> None:
    assert http("GET", f"{platform.url}/auth").status == 401
    assert http("GET", f"{platform.url}/auth", token="garbage").json == {"msg": "Authentication error: Invalid token"}
    forged = jwt.encode({"sub": ADMIN[0], "exp": 4102444800, "sign": 0, "kind": "user"}, Ed25519PrivateKey.generate(), "EdDSA")
    assert http("GET", f"{platform.url}/auth", token=forged).status == 401
    registered = platform.api("POST", "/workers", {"groups": [], "lifetime": "3s"})
    assert registered.status == 200
    worker_token = registered.json["token"]
    assert http("POST", f"{platform.url}/workers/heartbeat", token=worker_token).status == 200
    # a worker token never opens user routes, and a user token never opens worker routes
    assert http("GET", f"{platform.url}/auth", token=worker_token).status == 401
    assert http("POST", f"{platform.url}/workers/heartbeat", token=platform.token()).status == 401
    time.sleep(4.1)  # the worker's lifetime (3 s, rounded up to a whole second) runs out
    assert http("POST", f"{platform.url}/workers/heartbeat", token=worker_token).json == {"msg": "Authentication error: Invalid token"}


def test_admin_creates_users_and_names_are_unique(platform: Platform) -> None:
    platform.add_user("alice")
    duplicate = platform.api("POST", "/admin/users", {"username": "alice", "password": "x"})
    assert duplicate.status == 409 and duplicate.json["msg"] == "User or group with same name alice already exists"
    bad_name = platform.api("POST", "/admin/users", {"username": "no spaces", "password": "x"})
    assert bad_name.status == 400
    not_admin = platform.api("POST", "/admin/users", {"username": "bob", "password": "x"}, user="alice")
    assert not_admin.status == 403


def test_groups_share_the_user_namespace_and_have_a_quota(platform: Platform) -> None:
    platform.add_user("carol")
    assert platform.api("POST", "/groups", {"group_name": "lab"}, user="carol").status == 200
    assert platform.api("POST", "/groups", {"group_name": "lab"}, user="carol").status == 409
    assert platform.api("POST", "/groups", {"group_name": ADMIN[0]}, user="carol").status == 409
    statuses = [platform.api("POST", "/groups", {"group_name": f"g{i}"}, user="carol").status for i in range(7)]
    # the default quota is 8 groups, the personal group and "lab" included
    assert statuses == [200] * 6 + [403]


def test_submit_and_read_need_membership(platform: Platform) -> None:
    platform.add_user("owner")
    platform.add_user("outsider")
    mine = platform.api("POST", "/tasks", {**ECHO, "group_name": "owner"}, user="owner")
    assert mine.status == 200 and mine.json["task_id"] == 1
    task = mine.json["uuid"]
    assert platform.api("POST", "/tasks", {**ECHO, "group_name": "owner"}, user="outsider").status == 403
    assert platform.api("GET", f"/tasks/{task}", user="outsider").status == 403
    assert platform.api("DELETE", f"/tasks/{task}", user="outsider").status == 403
    assert platform.api("POST", "/tasks/query", {"group_name": "owner"}, user="outsider").status == 403
    assert platform.api("GET", f"/tasks/{task}/download/artifacts/result", user="outsider").status == 403
    assert platform.api("GET", f"/tasks/{task}", user="owner").status == 200
    assert platform.api("POST", "/tasks", {**ECHO, "group_name": "nowhere"}, user="owner").status == 404


def test_submit_validation(platform: Platform) -> None:
    for body in (
        {"task_spec": {"args": []}},
        {"task_spec": {"args": ["x"]}, "timeout": "soon"},
        {"task_spec": {"args": ["x"]}, "priority": "high"},
        {"task_spec": {"args": ["x"], "resources": [{"remote_file": {"Attachment": {"key": "k"}}, "local_path": "../../etc/passwd"}]}},
        {"task_spec": {"args": ["x"]}, "surprise": 1},
    ):
        answer = platform.api("POST", "/tasks", body)
        assert answer.status == 400, body
        assert answer.json["msg"].startswith("Process request error:")
    assert platform.api("POST", "/tasks/query", {"count": False}).json["count"] == 0


def test_query_filters_order_and_paging(platform: Platform) -> None:
    uuids = []
    for index in range(5):
        body = {**ECHO, "labels": ["even" if index % 2 == 0 else "odd", "all"], "tags": [f"t{index}"], "priority": index}
        uuids.append(platform.api("POST", "/tasks", body).json["uuid"])
    everything = platform.api("POST", "/tasks/query", {}).json
    assert [t["uuid"] for t in everything["tasks"]] == uuids[::-1]  # newest first
    assert everything["group_name"] == ADMIN[0]
    page = platform.api("POST", "/tasks/query", {"limit": 2, "offset": 1}).json
    assert [t["uuid"] for t in page["tasks"]] == uuids[::-1][1:3]
    even = platform.api("POST", "/tasks/query", {"labels": ["even", "all"]}).json
    assert {t["uuid"] for t in even["tasks"]} == {uuids[0], uuids[2], uuids[4]}
    assert platform.api("POST", "/tasks/query", {"tags": ["t3"]}).json["tasks"][0]["uuid"] == uuids[3]
    high = platform.api("POST", "/tasks/query", {"priority": ">=3"}).json
    assert {t["uuid"] for t in high["tasks"]} == {uuids[3], uuids[4]}
    assert platform.api("POST", "/tasks/query", {"priority": "!=0", "count": True}).json["count"] == 4
    assert platform.api("POST", "/tasks/query", {"states": ["Ready"], "creator_usernames": [ADMIN[0]], "count": True}).json["count"] == 5
    assert platform.api("POST", "/tasks/query", {"tags": []}).status == 400
    assert platform.api("POST", "/tasks/query", {"priority": "~3"}).status == 400


def test_cancel_a_ready_task(platform: Platform) -> None:
    task = platform.api("POST", "/tasks", ECHO).json["uuid"]
    assert platform.api("DELETE", f"/tasks/{task}").status == 200
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert info["state"] == "Cancelled"
    assert info["result"] == {"exit_status": 0, "msg": "UserCancellation"}
    again = platform.api("DELETE", f"/tasks/{task}")
    assert again.status == 404
    assert platform.api("GET", f"/tasks/{uuid.uuid4()}").status == 404


def test_user_artifact_upload_and_download_urls(platform: Platform) -> None:
    task = platform.api("POST", "/tasks", ECHO).json["uuid"]
    assert platform.api("GET", f"/tasks/{task}/download/artifacts/result").status == 404
    upload = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": 5})
    assert upload.status == 200 and upload.json["exist"] is False
    put = http("PUT", upload.json["url"], raw=b"12345", headers={"Content-Type": "application/octet-stream"})
    assert put.status == 200
    link = platform.api("GET", f"/tasks/{task}/download/artifacts/result").json
    assert link["size"] == 5
    assert http("GET", link["url"]).body == b"12345"
    replaced = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": 3})
    assert replaced.json["exist"] is True
    assert platform.api("GET", f"/tasks/{task}/download/artifacts/nonsense").status == 400
