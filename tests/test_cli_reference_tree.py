"""The newer reference's (0.6) command groups: batches, accounts and administration."""

from __future__ import annotations

import json

from conftest import Platform, http
from test_end_to_end import submitted_uuid


def test_batches_accounts_and_administration(platform: Platform) -> None:
    platform.start_worker("--labels", "fleet")
    (platform.home / "tasks.json").write_text(json.dumps([
        {"task_spec": {"args": ["sh", "-c", 'echo $N > "$MITO_RESULT_DIR/n"'], "envs": {"N": str(n)}}, "labels": ["batch"]}
        for n in range(3)
    ] + [{"task_spec": {"args": ["true"]}, "group_name": "nowhere"}]))
    submitted = platform.mito("tasks", "submit-many", "-f", "tasks.json").stdout.splitlines()
    assert len(submitted) == 4 and submitted[3].startswith("error: User or group with name nowhere")
    uuids = [line.split()[2] for line in submitted[:3]]
    for task in uuids:
        platform.wait_task(task)
    assert "3" == platform.mito("tasks", "query", "-l", "batch", "--count").stdout.split()[0]
    downloaded = platform.mito("tasks", "artifacts", "download-many", "result", "-l", "batch", "-o", "results", "--concurrent", "3")
    assert "Downloaded 3 files" in downloaded.stdout
    assert sorted(p.name for p in (platform.home / "results").iterdir()) == sorted(f"{u}.result.tar.gz" for u in uuids)
    listed = platform.mito("tasks", "artifacts", "download-list", "result", uuids[0], "--no-download").stdout
    assert uuids[0] in listed and "/blobs/" in listed
    assert "Deleted 0 artifacts" in platform.mito("tasks", "artifacts", "delete-many", "result", "-l", "batch").stdout  # < 1 hour old
    platform.mito("admin", "tasks", "artifacts", "delete", uuids[0], "result")
    assert platform.api("GET", f"/tasks/{uuids[0]}/download/artifacts/result").status == 404

    # cancelling in batches (tasks that no worker may run stay Ready)
    waiting = [submitted_uuid(platform.mito("submit", "-t", "nowhere", "-l", "stuck", "--", "true").stdout) for _ in range(3)]
    assert "Cancelled 2 tasks" in platform.mito("tasks", "cancel-list", f"{waiting[0]},{waiting[1]}").stdout
    assert "Cancelled 1 task in group" in platform.mito("tasks", "cancel-many", "-l", "stuck").stdout

    # attachments
    for name in ("a.txt", "b.txt"):
        (platform.home / name).write_text(name)
        platform.mito("groups", "attachments", "upload", name, f"inputs/{name}")
    assert "inputs/a.txt" in platform.mito("groups", "attachments", "query", "-k", "inputs").stdout
    platform.mito("groups", "attachments", "download-list", "inputs/a.txt", "inputs/b.txt", "-o", "got")
    assert (platform.home / "got" / "b.txt").read_text() == "b.txt"
    platform.mito("groups", "attachments", "download", "inputs/b.txt", "-o", "b-copy.txt")  # no -g: your own group
    assert (platform.home / "b-copy.txt").read_text() == "b.txt"
    assert "size 5 B" in platform.mito("groups", "attachments", "get", "inputs/b.txt").stdout
    platform.mito("admin", "groups", "attachments", "delete", "inputs/a.txt")
    assert "inputs/a.txt" not in platform.mito("groups", "attachments", "query").stdout

    # accounts and administration
    platform.mito("admin", "users", "create", "uma", "first-pass")
    assert "may create 3 groups" in platform.mito("admin", "users", "group-quota", "uma", "=3").stdout
    assert "may store 1 GB" in platform.mito("admin", "groups", "storage-quota", "uma", "=1GB").stdout
    assert "is Locked" in platform.mito("admin", "users", "state", "uma", "locked").stdout
    assert http("POST", f"{platform.url}/login", {"username": "uma", "password": "first-pass"}).status == 403
    platform.mito("admin", "users", "state", "uma", "active")
    changed = platform.mito("users", "change-password", "first-pass", "second-pass", user="uma", password="first-pass")
    assert "Password changed" in changed.stdout
    assert http("POST", f"{platform.url}/login", {"username": "uma", "password": "second-pass"}).status == 200
    assert "is Deleted" in platform.mito("admin", "users", "delete", "uma").stdout

    # workers
    fleet = platform.mito("workers", "query", "-l", "fleet").stdout
    assert "Normal" in fleet
    assert "Shutting down 1 worker (" in platform.mito("workers", "cancel-many", "-l", "fleet").stdout
    assert platform.api("POST", "/workers/query", {"labels": ["fleet"], "count": True}).json["count"] == 0
    usage = platform.mito("tasks", "submit-many", "-f", "missing.json", check=False)
    assert usage.returncode == 1 and "missing.json" in usage.stderr
