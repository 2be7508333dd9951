"""Users, groups, memberships and attachments over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

from conftest import ADMIN, Platform, http

OCTETS = {"Content-Type": "application/octet-stream"}


def md5(password: str) -> list[int]:
    return list(hashlib.md5(password.encode()).digest())


def upload(platform: Platform, group: str, key: str, data: bytes, user: str = ADMIN[0]) -> dict:
    answer = platform.api("POST", f"/groups/{group}/attachments", {"key": key, "content_length": len(data)}, user=user)
    assert answer.status == 200, answer.body
    assert http("PUT", answer.json["url"], raw=data, headers=OCTETS).status == 200
    return answer.json


def test_password_change_ends_other_sessions(platform: Platform) -> None:
    old_token = platform.add_user("erin")
    other = platform.api("POST", "/users/mallory/password", {"old_md5_password": md5("erin-password"), "new_md5_password": md5("x")}, user="erin")
    assert other.status == 401
    wrong = platform.api("POST", "/users/erin/password", {"old_md5_password": md5("nope"), "new_md5_password": md5("x")}, user="erin")
    assert wrong.status == 401
    changed = platform.api("POST", "/users/erin/password", {"old_md5_password": md5("erin-password"), "new_md5_password": md5("new-secret")}, user="erin")
    assert changed.status == 200
    assert http("GET", f"{platform.url}/auth", token=old_token).status == 401
    assert http("GET", f"{platform.url}/auth", token=changed.json["token"]).body == b"erin"
    assert http("POST", f"{platform.url}/login", {"username": "erin", "password": "new-secret"}).status == 200


def test_group_membership_and_visibility(platform: Platform) -> None:
    platform.add_user("ann")
    platform.add_user("ben")
    assert platform.api("POST", "/groups", {"group_name": "optics"}, user="ann").status == 200
    assert platform.api("GET", "/groups/optics", user="ben").status == 403
    assert platform.api("PUT", "/groups/optics/users", {"relations": {"ben": "read"}}, user="ben").status == 403
    assert platform.api("PUT", "/groups/optics/users", {"relations": {"ben": "read"}}, user="ann").status == 200
    seen_by_ben = platform.api("GET", "/groups/optics", user="ben").json
    assert seen_by_ben["users_in_group"] is None and seen_by_ben["creator_username"] == "ann"
    seen_by_ann = platform.api("GET", "/groups/optics", user="ann").json
    assert seen_by_ann["users_in_group"] == {"ann": "Admin", "ben": "Read"}
    assert platform.api("GET", "/users/groups", user="ben").json == {"groups": {"ben": "Admin", "optics": "Read"}}
    # Read cannot write; Write can submit
    assert platform.api("POST", "/tasks", {"group_name": "optics", "task_spec": {"args": ["true"]}}, user="ben").status == 403
    platform.api("PUT", "/groups/optics/users", {"relations": {"ben": "write"}}, user="ann")
    assert platform.api("POST", "/tasks", {"group_name": "optics", "task_spec": {"args": ["true"]}}, user="ben").status == 200
    assert platform.api("PUT", "/groups/optics/users", {"relations": {"ghost": "read"}}, user="ann").status == 400
    assert platform.api("PUT", "/groups/optics/users", {"relations": {}}, user="ann").status == 400
    # the last Admin cannot leave or be demoted
    assert platform.api("DELETE", "/groups/optics/users?users=ann", user="ann").status == 400
    assert platform.api("PUT", "/groups/optics/users", {"relations": {"ann": "write"}}, user="ann").status == 400
    assert platform.api("DELETE", "/groups/optics/users?users=ben", user="ann").status == 200
    assert platform.api("GET", "/groups/optics", user="ben").status == 403
    platform.api("PUT", "/groups/optics/users", {"relations": {"ben": "read"}}, user="ann")
    assert platform.api("POST", "/groups/optics/users/remove", {"users": ["ben"]}, user="ann").status == 200
    assert platform.api("GET", "/groups/nope", user="ann").status == 404


def test_attachments_round_trip_and_permissions(platform: Platform) -> None:
    platform.add_user("cleo")
    platform.add_user("dave")
    first = upload(platform, "cleo", "data/set.csv", b"a,b\n1,2\n", user="cleo")
    assert first["exist"] is False
    assert upload(platform, "cleo", "data/set.csv", b"a,b\n", user="cleo")["exist"] is True
    meta = platform.api("GET", "/groups/cleo/attachments/data/set.csv", user="cleo").json
    assert meta["size"] == 4 and meta["content_type"] == "NoSet"
    link = platform.api("GET", "/groups/cleo/download/attachments/data/set.csv", user="cleo").json
    assert http("GET", link["url"]).body == b"a,b\n"
    assert platform.api("GET", "/groups/cleo", user="cleo").json["storage_used"] == 4  # replaced, not added
    for outsider_call in (
        ("GET", "/groups/cleo/attachments/data/set.csv", None),
        ("GET", "/groups/cleo/download/attachments/data/set.csv", None),
        ("POST", "/groups/cleo/attachments", {"key": "x", "content_length": 1}),
        ("POST", "/groups/cleo/attachments/query", {}),
        ("DELETE", "/groups/cleo/attachments/data/set.csv", None),
    ):
        assert platform.api(outsider_call[0], outsider_call[1], outsider_call[2], user="dave").status == 403, outsider_call
    for bad_key in ("../etc/passwd", "/abs", "a//b", "a/./b", "a/../b", "tab\there"):
        answer = platform.api("POST", "/groups/cleo/attachments", {"key": bad_key, "content_length": 1}, user="cleo")
        assert answer.status == 400, bad_key
    assert platform.api("GET", "/groups/cleo/attachments/missing", user="cleo").status == 404


def test_attachment_queries_batches_and_the_delete_guard(platform: Platform) -> None:
    for key in ("runs/a.txt", "runs/b.txt", "notes/100%.txt", "list"):
        upload(platform, ADMIN[0], key, key.encode())
    group = ADMIN[0]
    found = platform.api("POST", f"/groups/{group}/attachments/query", {"key": "runs/"}).json
    assert [a["key"] for a in found["attachments"]] == ["runs/a.txt", "runs/b.txt"] and found["count"] == 2
    assert platform.api("POST", f"/groups/{group}/attachments/query", {"key": "%"}).json["count"] == 1  # no wildcards
    assert platform.api("POST", f"/groups/{group}/attachments/query", {"count": True}).json["count"] == 4
    page = platform.api("POST", f"/groups/{group}/attachments/query", {"limit": 1, "offset": 1}).json
    assert [a["key"] for a in page["attachments"]] == ["notes/100%.txt"]  # sorted by key: list, notes/..., runs/...
    links = platform.api("POST", f"/groups/{group}/download/attachments", {"key": "runs"}).json["downloads"]
    assert {d["key"] for d in links} == {"runs/a.txt", "runs/b.txt"}
    listed = platform.api("POST", f"/groups/{group}/download/attachments/list", {"keys": ["runs/a.txt", "missing"]}).json
    assert [d["key"] for d in listed["downloads"]] == ["runs/a.txt"]
    assert http("GET", listed["downloads"][0]["url"]).body == b"runs/a.txt"
    assert http("GET", platform.api("GET", f"/groups/{group}/download/attachments/list").json["url"]).body == b"list"
    # everything is younger than an hour: ordinary deletes refuse, the admin route does not
    guarded = platform.api("DELETE", f"/groups/{group}/attachments/runs/a.txt")
    assert guarded.status == 400 and "less than an hour" in guarded.json["msg"]
    assert platform.api("POST", f"/groups/{group}/delete/attachments", {"key": "runs"}).json == {"deleted_count": 0, "group_name": group}
    listed_delete = platform.api("POST", f"/groups/{group}/delete/attachments/list", {"keys": ["runs/a.txt"]}).json
    assert listed_delete == {"deleted_count": 0, "failed_keys": ["runs/a.txt"], "group_name": group}
    assert platform.api("DELETE", f"/admin/groups/{group}/attachments/runs/a.txt").status == 200
    assert platform.api("GET", f"/groups/{group}/attachments/runs/a.txt").status == 404
    assert platform.api("GET", f"/groups/{group}").json["storage_used"] == len("runs/b.txt") + len("notes/100%.txt") + len("list")


def test_admin_user_management_and_quotas(platform: Platform) -> None:
    token = platform.add_user("fred")
    assert platform.api("POST", "/admin/users/fred/state", {"state": "Locked"}).json == {"state": "Locked"}
    assert http("GET", f"{platform.url}/auth", token=token).status == 403
    assert http("POST", f"{platform.url}/login", {"username": "fred", "password": "fred-password"}).status == 403
    platform.api("POST", "/admin/users/fred/state", {"state": "Active"})
    assert platform.api("POST", "/admin/users/fred/password", {"new_md5_password": md5("reset")}).status == 200
    assert http("GET", f"{platform.url}/auth", token=token).status == 401  # the reset ended the session
    assert http("POST", f"{platform.url}/login", {"username": "fred", "password": "reset"}).status == 200
    assert platform.api("POST", "/admin/users/fred/group-quota", {"group_quota": "+2"}).json == {"group_quota": 10}
    assert platform.api("POST", "/admin/users/fred/group-quota", {"group_quota": "-20"}).json == {"group_quota": 0}
    assert platform.api("POST", "/admin/users/ghost/group-quota", {"group_quota": "1"}).status == 404
    assert platform.api("POST", "/admin/groups/fred/storage-quota", {"storage_quota": "=10"}).json == {"storage_quota": 10}
    assert platform.api("POST", "/admin/groups/fred/storage-quota", {"storage_quota": "+1KB"}).json == {"storage_quota": 1010}
    assert platform.api("POST", "/admin/groups/fred/storage-quota", {"storage_quota": "lots"}).status == 400
    assert platform.api("POST", "/admin/groups/ghost/storage-quota", {"storage_quota": "1"}).status == 404
    over = platform.api("POST", "/groups/fred/attachments", {"key": "big", "content_length": 2000}, token=http(
        "POST", f"{platform.url}/login", {"username": "fred", "password": "reset", "retain": True}).json["token"])
    assert over.status == 403 and over.json["msg"] == "Resource quota exceeded"
    assert platform.api("DELETE", "/admin/users/fred").json == {"state": "Deleted"}
    assert http("POST", f"{platform.url}/login", {"username": "fred", "password": "reset"}).status == 403
    platform.add_user("gina")
    assert platform.api("POST", "/admin/users/fred/state", {"state": "Active"}, user="gina").status == 403


def test_admin_shutdown_needs_the_logged_secret(platform: Platform) -> None:
    platform.add_user("quinn")
    secret = next(line.split("Set random shutdown secret: ")[1].strip() for line in platform.log.splitlines() if "shutdown secret" in line)
    assert platform.api("POST", "/admin/shutdown", {"secret": secret}, user="quinn").status == 403
    assert platform.api("POST", "/admin/shutdown", {"secret": "guess"}).status == 403
    assert platform.coordinator.poll() is None
    assert platform.api("POST", "/admin/shutdown", {"secret": secret}).status == 200
    assert platform.coordinator.wait(30) == 0
    assert "coordinator shutting down" in platform.log
