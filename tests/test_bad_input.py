"""Bad input, case by case: malformed JSON, wrong types, oversized bodies, unicode and control
characters in names, path traversal in keys, resource paths and URLs, durations and sizes out of
range. Each gets a 4xx with a readable ``{"msg"}`` and changes nothing that can be read back."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPConnection
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Platform, http
from mito_lab.server.handlers.base import MAX_JSON_BODY, SMALL_JSON_BODY, TASK_JSON_BODY
from mito_lab.wire import NAME_PATTERN, relative_path_problem

GROUP = "mitosis_admin"
OCTETS = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class Case:
    """One bad request: what is sent, the status it must get, and words its message must have."""

    method: str
    path: str
    body: Any = None
    status: int = 400
    says: str = ""
    raw: bytes | None = None

    def __str__(self) -> str:
        shown = self.raw[:80] if self.raw is not None else json.dumps(self.body)[:120]
        return f"{self.method} {self.path} {shown!r}"


def submit(**fields: Any) -> dict[str, Any]:
    return {"group_name": GROUP, "task_spec": {"args": ["true"]}, **fields}


def resource(local_path: Any) -> dict[str, Any]:
    return submit(task_spec={"args": ["true"], "resources": [{"remote_file": {"Attachment": {"key": "k"}}, "local_path": local_path}]})


MALFORMED = [
    Case("POST", "/tasks", raw=b"{not json", says="not valid JSON"),
    Case("POST", "/tasks", raw=b'{"group_name": "x"', says="not valid JSON"),
    Case("POST", "/tasks", raw=b'{"group_name": "x"} trailing', says="not valid JSON"),
    Case("POST", "/tasks", raw=b"", says="body"),
    Case("POST", "/tasks", raw=b"null", says="body"),
    Case("POST", "/tasks", raw=b"[]", says="body"),
    Case("POST", "/tasks", raw=b'{"group_name": "\xff\xfe"}', says="not valid JSON"),
    Case("POST", "/tasks", raw=b'{"group_name": "mitosis_admin", "priority": NaN, "task_spec": {"args": ["true"]}}', says="NaN"),
    Case("POST", "/tasks", raw=b'{"priority": Infinity}', says="Infinity"),
    Case("POST", "/tasks", raw=b"[" * 100_000 + b"]" * 100_000, says="nested too deeply"),
    Case("POST", "/tasks/query", raw=b'{"group_name": "a", "group_name": ', says="not valid JSON"),
]

WRONG_TYPES = [
    Case("POST", "/tasks", {"group_name": 5, "task_spec": {"args": ["true"]}}, says="group_name"),
    Case("POST", "/tasks", submit(task_spec={"args": "true"}), says="task_spec.args"),
    Case("POST", "/tasks", submit(task_spec={"args": []}), says="task_spec.args"),
    Case("POST", "/tasks", submit(task_spec={"args": [""]}), says="program"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "envs": {"A": 1}}), says="envs.A"),
    Case("POST", "/tasks", submit(priority="high"), says="priority"),
    Case("POST", "/tasks", submit(priority=True), says="priority"),
    Case("POST", "/tasks", submit(priority=1.5), says="priority"),
    Case("POST", "/tasks", submit(tags="gpu"), says="tags"),
    Case("POST", "/tasks", submit(labels=[["nested"]]), says="labels.0"),
    Case("POST", "/tasks", submit(labels=[{}]), says="labels.0"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "terminal_output": "yes"}), says="terminal_output"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "watch": ["not-a-uuid", "ExecSpawned"]}), says="watch"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "watch": [None, "Nonsense"]}), says="watch"),
    Case("POST", "/tasks", submit(unknown_field=1), says="unknown_field"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "limit": False}, says="limit"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "count": "true"}, says="count"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "states": ["Sleeping"]}, says="states.0"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "exit_status": "maybe"}, says="exit_status"),
    Case("POST", "/tasks/cancel/list", {"uuids": [{}]}, says="uuids.0"),
    Case("POST", "/tasks/cancel/list", {"uuids": []}, says="uuids"),
    Case("POST", "/tasks/cancel/list", {"uuids": "all"}, says="uuids"),
    Case("POST", "/workers", {"labels": [{}]}, says="labels.0"),
    Case("POST", "/workers", {"groups": [GROUP], "lifetime": [1]}, says="lifetime"),
    Case("POST", "/login", {"username": ["mitosis_admin"], "password": "x"}, says="username"),
    Case("POST", "/login", {"username": "mitosis_admin", "md5_password": [256] * 16}, says="md5_password"),
    Case("POST", "/login", {"username": "mitosis_admin", "md5_password": [True] * 16}, says="md5_password"),
    Case("POST", "/login", {"username": "mitosis_admin", "password": "x", "retain": "yes"}, says="retain"),
    Case("POST", "/admin/users", {"username": "valid", "password": "x", "admin": 1}, says="admin"),
    Case("PUT", f"/groups/{GROUP}/users", {"relations": {"mitosis_admin": "Owner"}}, says="relations"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?offset=-1", says="offset"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?stream=stdin", says="stream"),
    # numbers in plain digits only, and arguments as sent: Tornado would turn %02 into a space and strip it
    *(Case("GET", f"/tasks/00000000-0000-0000-0000-000000000000/logs?{query}", says=name) for query, name in (
        ("offset=0%02", "offset"), ("offset=%201", "offset"), ("offset=1_000", "offset"), ("offset=%D9%A3", "offset"),
        ("offset=1.5", "offset"), ("wait=1%09", "wait"), ("wait=%2B1", "wait"), ("stream=stdout%02", "stream"))),
    Case("POST", "/tasks/query?limit=5", {"group_name": GROUP}, says="unknown query parameter"),
]

HUGE = [
    Case("POST", "/tasks", raw=b'{"group_name": "' + b"x" * (TASK_JSON_BODY + 1) + b'"}', status=413, says=f"limit is {TASK_JSON_BODY}"),
    Case("POST", "/tasks/submit", {"tasks": [submit(labels=[f"label-{i}-{'x' * 200}" for i in range(100)])] * 800}, status=413, says="too large"),
    Case("POST", "/tasks", submit(task_spec={"args": ["x" * (MAX_JSON_BODY + 10)]}), status=413, says="too large"),
    Case("POST", "/tasks/query", raw=b'{"group_name": "' + b"x" * SMALL_JSON_BODY + b'"}', status=413, says=f"limit is {SMALL_JSON_BODY}"),
]

NAMES = [
    Case("POST", "/groups", {"group_name": name}, says="group_name")
    for name in ["", "a b", "tab\there", "new\nline", "nul\x00", "ünïcödé", "emoji😀", "slash/name", "../up", "x" * 256, "semi;colon", "\u202eevil"]
] + [
    Case("POST", "/admin/users", {"username": name, "password": "x"}, says="username")
    for name in ["", "with space", "cr\rlf", "bell\x07", "Ωmega", "x" * 256, "quote'"]
] + [
    Case("POST", "/tasks", submit(labels=["nul\x00label"]), says="NUL"),
    Case("POST", "/tasks", raw=b'{"group_name": "mitosis_admin", "tags": ["\\ud800lone"], "task_spec": {"args": ["true"]}}', says="surrogate"),
    Case("POST", "/tasks", submit(task_spec={"args": ["echo", "a\x00b"]}), says="NUL"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "envs": {"A=B": "x"}}), says="without '='"),
    Case("POST", "/tasks", submit(task_spec={"args": ["true"], "envs": {"": "x"}}), says="non-empty"),
    Case("POST", "/tasks", submit(labels=["x" * 256]), says="labels.0"),
    Case("POST", "/tasks", submit(labels=[""]), says="labels.0"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "creator_usernames": ["nul\x00"]}, says="NUL"),
    Case("GET", "/groups/nul%00group", says="NUL"),
    Case("DELETE", f"/groups/{GROUP}/users?users=a%00b", says="NUL"),
]

TRAVERSAL = [
    Case("POST", f"/groups/{GROUP}/attachments", {"key": key, "content_length": 1}, says="invalid attachment key")
    for key in ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "a\\b", "..", "tab\tkey"]
] + [
    Case("POST", f"/groups/{GROUP}/attachments", {"key": "nul\x00key", "content_length": 1}, says="NUL"),
    Case("POST", f"/groups/{GROUP}/attachments", {"key": "x" * 1100, "content_length": 1}, says="key"),
] + [
    Case("POST", "/tasks", resource(path), says="local_path" if not isinstance(path, str) else "absolute or contains `..`")
    for path in ["../../etc/cron.d/x", "/etc/passwd", "a/../../b", "", ".", "a\\..\\b", ["list"], None]
] + [
    Case("GET", f"/groups/{GROUP}/attachments/..%2F..%2Fcoordinator-data%2Fprivate.pem", says="invalid attachment key"),
    Case("GET", f"/groups/{GROUP}/download/attachments/a%2F..%2F..%2Fx", says="invalid attachment key"),
    Case("GET", "/blobs/mito-attachments/..%2F..%2Fprivate.pem?expires=9999999999&sig=x", status=403, says="signature"),
    Case("GET", "/blobs/mito-attachments/x?expires=soon&sig=x", status=403, says="malformed"),
]

OUT_OF_RANGE = [
    Case("POST", "/tasks", submit(timeout=timeout), says="timeout")
    for timeout in ["0s", "-5s", -1, "70y", 10**12, "10 parsecs", "", True, None]
] + [
    Case("POST", "/tasks", submit(priority=2**31), says="priority"),
    Case("POST", "/tasks", submit(priority=-(2**31) - 1), says="priority"),
    Case("POST", "/tasks", submit(max_attempts=0), says="max_attempts"),
    Case("POST", "/tasks", submit(max_attempts=101), says="max_attempts"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "limit": -1}, says="limit"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "offset": 2**70}, says="offset"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "exit_status": ">9999999999"}, says="out of range"),
    Case("POST", "/tasks/query", {"group_name": GROUP, "priority": "<=-99999999999"}, says="priority"),
    Case("POST", f"/groups/{GROUP}/attachments", {"key": "k", "content_length": -1}, says="content_length"),
    Case("POST", f"/groups/{GROUP}/attachments", {"key": "k", "content_length": 2**63}, says="content_length"),
    Case("POST", f"/groups/{GROUP}/attachments", {"key": "k", "content_length": 10**12}, status=403, says="quota"),
    Case("POST", "/workers", {"lifetime": "200y"}, says="lifetime"),
    Case("POST", "/admin/users/mitosis_admin/group-quota", {"group_quota": "=99999999999"}, says="over"),
    Case("POST", "/admin/users/mitosis_admin/group-quota", {"group_quota": "1e3"}, says="group_quota"),
    Case("POST", f"/admin/groups/{GROUP}/storage-quota", {"storage_quota": ""}, says="invalid"),
    Case("POST", f"/admin/groups/{GROUP}/storage-quota", {"storage_quota": "9" * 400 + "GB"}, says="storage_quota"),
    Case("POST", f"/admin/groups/{GROUP}/storage-quota", {"storage_quota": "=9000PB"}, says="over"),
    Case("POST", f"/admin/groups/{GROUP}/storage-quota", {"storage_quota": "-5 parsecs"}, says="invalid"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?offset=99999999999999999999999", says="offset"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?offset=" + "9" * 5000, says="offset"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?wait=" + "9" * 400, says="wait"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?wait=601", says="wait"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?wait=nan", says="wait"),
    Case("GET", "/tasks/00000000-0000-0000-0000-000000000000/logs?wait=-1", says="wait"),
]


def state(platform: Platform) -> Any:
    """Everything a bad request could have changed, as read back through the API."""
    query = {"group_name": GROUP}
    return (
        platform.api("POST", "/tasks/query", query).json["tasks"],
        platform.api("POST", f"/groups/{GROUP}/attachments/query", {}).json["attachments"],
        platform.api("GET", f"/groups/{GROUP}").json,
        platform.api("GET", "/users/groups").json,
        platform.api("POST", "/workers/query", query).json["workers"],
    )


def send(platform: Platform, case: Case) -> Any:
    if case.raw is not None:
        return platform.api(case.method, case.path, raw=case.raw)
    return platform.api(case.method, case.path, case.body)


def check(platform: Platform, cases: list[Case]) -> None:
    platform.api("POST", "/tasks", submit(labels=["before"]))  # something to lose
    before = state(platform)
    problems = []
    for case in cases:
        answer = send(platform, case)
        try:
            message = answer.json["msg"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{case}: {answer.status} without a JSON message: {answer.body[:200]!r}")
            continue
        if answer.status != case.status or case.says.lower() not in message.lower():
            problems.append(f"{case}: {answer.status} {message[:300]!r}, expected {case.status} saying {case.says!r}")
    assert not problems, "\n".join(problems)
    assert state(platform) == before
    assert "Traceback" not in platform.log, platform.log[-3000:]


def test_malformed_json(platform: Platform) -> None:
    check(platform, MALFORMED)


def test_wrong_types(platform: Platform) -> None:
    check(platform, WRONG_TYPES)


def test_huge_bodies_get_413_and_the_server_goes_on(platform: Platform) -> None:
    check(platform, HUGE)
    # a body without Content-Length (chunked) is counted as it arrives
    connection = HTTPConnection(urllib.parse.urlsplit(platform.url).netloc, timeout=60)
    try:
        def pieces() -> Iterator[bytes]:
            yield b'{"group_name": "'
            for _ in range(17):
                yield b"y" * (1024 * 1024)
            yield b'"}'

        connection.request("POST", "/tasks/query", body=pieces(), headers={"Authorization": f"Bearer {platform.token()}", "Content-Type": "application/json"})
        answer = connection.getresponse()
        assert answer.status == 413 and "too large" in json.loads(answer.read())["msg"]
    finally:
        connection.close()
    # just under a route's limit is read (and refused on its merits, not its size)
    padded = b'{"group_name": "mitosis_admin"' + b" " * (SMALL_JSON_BODY - 100) + b"}"
    assert platform.api("POST", "/tasks/query", raw=padded).status == 200
    padded = b'{"tasks": [{"task_spec": {"args": ["true"]}}]' + b" " * (MAX_JSON_BODY - 100) + b"}"
    assert platform.api("POST", "/tasks/submit", raw=padded).status == 200


def test_names_with_unicode_and_control_characters(platform: Platform) -> None:
    check(platform, NAMES)
    # what is allowed is stored and read back exactly
    marks = ["ünïcode-label", "emoji-😀", "with space", "quote'\"", "rtl-\u202e"]
    task = platform.api("POST", "/tasks", submit(labels=marks, tags=["Ωmega"])).json["uuid"]
    info = platform.api("GET", f"/tasks/{task}").json["info"]
    assert sorted(info["labels"]) == sorted(marks) and info["tags"] == ["Ωmega"]
    found = platform.api("POST", "/tasks/query", {"group_name": GROUP, "labels": ["emoji-😀"]}).json["tasks"]
    assert [t["uuid"] for t in found] == [task]


def test_path_traversal_in_keys_resources_and_urls(platform: Platform) -> None:
    check(platform, TRAVERSAL)


def test_durations_and_sizes_out_of_range(platform: Platform) -> None:
    check(platform, OUT_OF_RANGE)


def test_generated_names_and_keys_are_accepted_exactly_when_valid(platform: Platform) -> None:
    """Hypothesis: any text as a group name or an attachment key gets 200 when valid and a 4xx
    otherwise; an accepted key is stored under its own name and downloads back."""
    token = platform.token()
    assert platform.api("POST", f"/admin/users/{GROUP}/group-quota", {"group_quota": "=100000"}).status == 200
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=st.text(max_size=260) | st.from_regex(NAME_PATTERN, fullmatch=True))
    def group_names(name: str) -> None:
        answer = http("POST", f"{platform.url}/groups", {"group_name": name}, token=token)
        valid = re.fullmatch(NAME_PATTERN, name) is not None
        if valid and name not in seen and name != GROUP:
            assert answer.status == 200, (name, answer.body)
            seen.add(name)
        else:
            assert answer.status in (400, 403, 409) and "msg" in answer.json, (name, answer.status, answer.body)

    pieces = st.sampled_from(["..", ".", "", "/", "\\", "a", "é", " ", "\t", "%2e", "~", "😀"])
    keys = st.lists(pieces, max_size=8).map("".join) | st.text(max_size=40)

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(key=keys)
    def attachment_keys(key: str) -> None:
        answer = http("POST", f"{platform.url}/groups/{GROUP}/attachments", {"key": key, "content_length": 3}, token=token)
        if not key or relative_path_problem(key) is not None or "\x00" in key:
            assert answer.status == 400 and "msg" in answer.json, (key, answer.status, answer.body)
            return
        assert answer.status == 200, (key, answer.body)
        assert http("PUT", answer.json["url"], raw=b"abc", headers=OCTETS).status == 200
        quoted = urllib.parse.quote(key, safe="/")
        download = http("GET", f"{platform.url}/groups/{GROUP}/download/attachments/{quoted}", token=token)
        assert download.status == 200, (key, download.body)
        assert http("GET", download.json["url"]).body == b"abc"

    group_names()
    attachment_keys()
    objects = platform.home / "coordinator-data" / "objects"
    stored = [p for p in platform.home.rglob("*") if p.is_file() and p.stat().st_size == 3 and p.read_bytes() == b"abc"]
    assert stored and all(objects in p.parents for p in stored)
    assert "Traceback" not in platform.log, platform.log[-3000:]
