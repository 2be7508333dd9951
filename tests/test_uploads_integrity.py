"""Issue 19, uploads and the embedded default's integrity, on real processes: uploads commit on
completion (what arrived, from whom, under its own object name), S3's declared sizes enforced, a
full local disk answered 507, no Redis URL that reads or rewrites every group's task states, one
coordinator per data dir, and one claimant per task across coordinators on one PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from minio import Minio

from conftest import ADMIN, Platform, backend_args, http, require_service, start_platform
from mito_lab.testing import RedisServer, S3Server, coordinator_command, free_port

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(params=["sqlite-local", "postgres-local", "sqlite-s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator on each database with the local store, and on SQLite with S3 (SeaweedFS)."""
    running = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    yield running
    running.stop()


def put(url: str, data: bytes) -> int:
    """PUT ``data`` to an upload URL as the reference's clients do: the URL as given."""
    return http("PUT", url, raw=data, headers=OCTETS).status


def download(url: str) -> bytes:
    answer = http("GET", url)
    assert answer.status == 200, answer.body
    return answer.body


def attachment_url(platform: Platform, group: str, key: str, size: int, user: str = ADMIN[0]) -> str:
    answer = platform.api("POST", f"/groups/{group}/attachments", {"key": key, "content_length": size}, user=user)
    assert answer.status == 200, answer.body
    return answer.json["url"]


def storage_used(platform: Platform, group: str) -> int:
    return platform.api("GET", f"/groups/{group}").json["storage_used"]


def lab_with_member(platform: Platform, member: str) -> None:
    """Group ``lab`` (the admin's), where ``member`` has Write."""
    platform.add_user(member)
    assert platform.api("POST", "/groups", {"group_name": "lab"}).status == 200
    assert platform.api("PUT", "/groups/lab/users", {"relations": {member: "write"}}).status == 200


# --- 1. commit on completion ------------------------------------------------------------------------


def test_an_upload_url_of_a_member_since_removed_records_nothing(any_store: Platform) -> None:
    """Today the attachment and the artifact are recorded (and charged) when the URL is handed out,
    and the URL works for an hour: a member removed meanwhile still fills the group's storage."""
    platform = any_store
    lab_with_member(platform, "mara")
    task = platform.api("POST", "/tasks", {"group_name": "lab", "task_spec": {"args": ["true"]}}, user="mara").json["uuid"]
    data = b"written after she left"
    attachment = attachment_url(platform, "lab", "notes.txt", len(data), user="mara")
    artifact = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": len(data)}, user="mara")
    assert artifact.status == 200, artifact.body
    assert platform.api("POST", "/groups/lab/users/remove", {"users": ["mara"]}).status == 200

    assert put(attachment, data) == 200  # the store cannot tell; the coordinator can
    assert put(artifact.json["url"], data) == 200
    assert platform.api("GET", "/groups/lab/attachments/notes.txt").status == 404
    assert platform.api("GET", f"/tasks/{task}").json["artifacts"] == []
    assert storage_used(platform, "lab") == 0


def test_a_url_handed_out_before_a_later_upload_cannot_replace_it(any_store: Platform) -> None:
    """Today both URLs name the same object: the stale one overwrites the newer upload, which stays
    recorded at its own size (downloads then get other bytes than the size says)."""
    platform = any_store
    stale = attachment_url(platform, ADMIN[0], "model.bin", 10)
    newer = attachment_url(platform, ADMIN[0], "model.bin", 20)
    assert put(newer, b"n" * 20) == 200
    assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/model.bin").json["size"] == 20
    put(stale, b"s" * 10)  # accepted by the store or not, it must change nothing
    assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/model.bin").json["size"] == 20
    link = platform.api("GET", f"/groups/{ADMIN[0]}/download/attachments/model.bin").json
    assert download(link["url"]) == b"n" * 20
    assert storage_used(platform, ADMIN[0]) == 20


# --- 2. S3 does not enforce a declared length: the coordinator does ----------------------------------


def test_s3_upload_larger_than_declared_is_refused_deleted_and_not_charged(tmp_path: Path, s3: S3Server) -> None:
    """Today a 10-byte declaration accepts 5 MB on S3 and the quota counts 10."""
    platform = start_platform(tmp_path / "platform", *s3.coordinator_args())
    try:
        url = attachment_url(platform, ADMIN[0], "small.txt", 10)
        assert put(url, b"x" * (5 << 20)) == 200  # SeaweedFS takes it: the length is not signed
        assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/small.txt").status == 404
        assert storage_used(platform, ADMIN[0]) == 0
        store = Minio(s3.url.removeprefix("http://"), access_key=s3.access_key, secret_key=s3.secret_key, secure=False, region="us-east-1")
        assert [o.object_name for o in store.list_objects("mitosis-attachments", recursive=True)] == []
        # the declared size, sent whole, is recorded
        url = attachment_url(platform, ADMIN[0], "small.txt", 10)
        assert put(url, b"y" * 10) == 200
        assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/small.txt").json["size"] == 10
        assert storage_used(platform, ADMIN[0]) == 10
    finally:
        platform.stop()


# --- 3. a full disk under the local store ---------------------------------------------------------------


@pytest.fixture
def small_disk_platform(tmp_path: Path) -> Iterator[Platform]:
    """A coordinator whose local store sits on a 1 MiB tmpfs, mounted in a mount namespace of its
    own (``unshare -m``): the mount lives and dies with the coordinator process."""
    if shutil.which("unshare") is None:
        require_service("unshare (util-linux) is needed to give the coordinator a small filesystem")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True)
    if probe.returncode != 0:
        require_service(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.decode().strip()}")
    home = tmp_path / "platform"
    objects = home / "coordinator-data" / "objects"
    objects.mkdir(parents=True)
    port = free_port()
    mount = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(objects), *coordinator_command(home, port)]
    platform = Platform(home=home, url=f"http://127.0.0.1:{port}", coordinator=None, command=command)  # type: ignore[arg-type]
    platform.start_coordinator()
    try:
        yield platform
    finally:
        platform.stop()


def test_a_full_local_disk_answers_507_and_records_nothing(small_disk_platform: Platform) -> None:
    """Today the connection is reset mid-upload and the attachment stays recorded at its declared
    size: downloads 404 and the quota is charged."""
    platform = small_disk_platform
    fits = os.urandom(600 << 10)
    assert put(attachment_url(platform, ADMIN[0], "fits.bin", len(fits)), fits) == 200
    assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/fits.bin").json["size"] == len(fits)
    too_big = os.urandom(800 << 10)
    url = attachment_url(platform, ADMIN[0], "too-big.bin", len(too_big))
    answer = http("PUT", url, raw=too_big, headers=OCTETS)
    assert answer.status == 507 and "storage" in answer.json["msg"]
    assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/too-big.bin").status == 404
    assert storage_used(platform, ADMIN[0]) == len(fits)
    link = platform.api("GET", f"/groups/{ADMIN[0]}/download/attachments/fits.bin").json
    assert download(link["url"]) == fits
    # what failed left nothing behind: a smaller upload fits in the space it took
    later = os.urandom(300 << 10)
    assert put(attachment_url(platform, ADMIN[0], "later.bin", len(later)), later) == 200
    assert platform.api("GET", f"/groups/{ADMIN[0]}/attachments/later.bin").json["size"] == len(later)


# --- 4. Redis ---------------------------------------------------------------------------------------------


def test_no_redis_url_reads_or_rewrites_every_groups_task_states(tmp_path: Path, redis_server: RedisServer) -> None:
    """Today ``GET /redis`` hands any user the ``mitosis_client`` URL (every group's ``task:*``
    keys, and its ``?protocol=resp3`` is refused by redis-py as handed out), and registering a
    worker hands out ``mitosis_worker``, which may rewrite them all. The coordinator now hands out
    neither, and deletes those ACL users: URLs handed out before stop working.

    A private Redis server: the reference's ACL users have fixed, server-wide names."""
    admin = redis.Redis(port=redis_server.port)
    admin.execute_command("ACL", "SETUSER", "mitosis_client", "on", ">old-client-password", "~task:*", "&task:*", "+@read")
    platform = start_platform(tmp_path / "platform", "--redis", redis_server.url)
    try:
        platform.add_user("nia")
        assert platform.api("GET", "/redis", user="nia").json == {"url": None}
        assert platform.api("POST", "/workers", {"groups": []}, user="nia").json["redis_url"] is None
        handed_out_before = redis.Redis(port=redis_server.port, username="mitosis_client", password="old-client-password")
        with pytest.raises(redis.exceptions.AuthenticationError):
            handed_out_before.get("task:anything")
        assert admin.execute_command("ACL", "USERS") == [b"default"]
        assert http("GET", f"{platform.url}/redis").status == 401
    finally:
        platform.stop()
        admin.close()


# --- 5. one coordinator per data dir; one claimant per task ------------------------------------------------


def test_a_second_coordinator_on_the_same_data_dir_exits_naming_the_holder(platform: Platform) -> None:
    """Today the second one starts on the same SQLite file and local store, and tasks run twice."""
    data_dir = platform.home / "coordinator-data"
    second = subprocess.run(
        [sys.executable, "-m", "mito_lab", "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, env=platform.env(), cwd=platform.home,
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(data_dir) in lines[0] and f"PID {platform.coordinator.pid}" in lines[0]
    assert platform.api("GET", "/health").status == 200  # the first one is untouched


def test_two_coordinators_on_one_postgres_never_hand_a_task_to_two_workers(tmp_path: Path, pg_url: str) -> None:
    """Eight workers take tasks as fast as they can, half through each coordinator: every task is
    handed out exactly once, and no worker gets more than it asked for. (The claim re-checks state
    and claimant on the row it writes; its SKIP LOCKED choice is evaluated once.)"""
    first = start_platform(tmp_path / "a", "--db", pg_url)
    second = start_platform(tmp_path / "b", "--db", pg_url)
    try:
        total = 300
        spec = {"group_name": ADMIN[0], "task_spec": {"args": ["true"]}}
        answer = first.api("POST", "/tasks/submit", {"tasks": [spec] * total})
        assert answer.status == 200, answer.body
        coordinators = [first, second] * 4
        tokens = [c.api("POST", "/workers", {"groups": []}).json["token"] for c in coordinators]
        taken: list[list[int]] = [[] for _ in coordinators]

        def work(index: int) -> None:
            empty = 0
            while empty < 3:
                answer = http("POST", f"{coordinators[index].url}/workers/exchange", {"want": 4}, token=tokens[index])
                assert answer.status == 200, answer.body
                got: list[Any] = answer.json["tasks"]
                assert len(got) <= 4  # never more than asked (a SKIP LOCKED subquery run per row took dozens)
                taken[index].extend(task["id"] for task in got)
                empty = 0 if got else empty + 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(coordinators))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        counts = Counter(task_id for ids in taken for task_id in ids)
        assert [task_id for task_id, seen in counts.items() if seen > 1] == []
        assert len(counts) == total
        assert all(sum(len(taken[i]) for i in range(len(coordinators)) if coordinators[i] is c) for c in (first, second))
    finally:
        first.stop()
        second.stop()
