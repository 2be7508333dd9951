"""A task from submit to downloaded artifact through real coordinator and worker processes, driven
by the CLI as a user would, on every backend combination."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from conftest import Platform, backend_args, start_platform

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def submitted_uuid(output: str) -> str:
    match = UUID.search(output)
    assert match, output
    return match.group(0)


@pytest.fixture(params=["sqlite-local", "postgres-local", "sqlite-s3", "postgres-s3"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Platform:
    platform = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    request.addfinalizer(platform.stop)
    platform.start_worker()
    return platform


def test_task_runs_from_submit_to_downloaded_artifact(live: Platform) -> None:
    script = 'echo "$GREETING from $MITO_TASK_UUID" > "$MITO_RESULT_DIR/hello.txt"; echo log > "$MITO_EXEC_DIR/x.log"; echo out; echo err >&2'
    uuid = submitted_uuid(live.mito("submit", "-l", "e2e", "-e", "GREETING=hi", "--terminal", "--", "sh", "-c", script).stdout)

    info = live.wait_task(uuid)
    assert info["state"] == "Finished"
    assert info["result"] == {"exit_status": 0, "msg": None}
    assert info["reporter_uuid"]

    shown = live.mito("get", "task", uuid).stdout
    assert "Finished" in shown and "result (" in shown and "exec-log (" in shown and "std-log (" in shown

    live.mito("get", "artifact", uuid, "result", "-o", "out/result.tar.gz")
    with tarfile.open(live.home / "out" / "result.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["result", "result/hello.txt"]
        assert tar.extractfile("result/hello.txt").read().decode() == f"hi from {uuid}\n"  # type: ignore[union-attr]

    live.mito("get", "artifact", uuid, "std-log")  # default name in the current directory
    with tarfile.open(live.home / "std-log.tar.gz") as tar:
        assert tar.extractfile("std-log/stdout.log").read() == b"out\n"  # type: ignore[union-attr]
        assert tar.extractfile("std-log/stderr.log").read() == b"err\n"  # type: ignore[union-attr]
        assert tar.getmember("std-log/stdout.log").mode == 0o664

    live.mito("get", "artifact", uuid, "exec-log", "-o", "exec.tgz")
    with tarfile.open(live.home / "exec.tgz") as tar:
        assert "exec-log/x.log" in tar.getnames()

    listing = live.mito("get", "tasks", "-l", "e2e").stdout
    assert uuid in listing and "Finished" in listing


def test_exit_code_timeout_and_missing_program(live: Platform) -> None:
    failing = submitted_uuid(live.mito("submit", "--", "sh", "-c", "exit 3").stdout)
    slow = submitted_uuid(live.mito("submit", "--timeout", "1s", "--", "sleep", "60").stdout)
    missing = submitted_uuid(live.mito("submit", "--", "no-such-program-here").stdout)

    assert live.wait_task(failing)["result"] == {"exit_status": 3, "msg": None}
    timed_out = live.wait_task(slow)
    assert timed_out["state"] == "Cancelled"
    assert timed_out["result"] == {"exit_status": -15, "msg": "ExecTimeout"}  # killed by SIGTERM
    assert live.wait_task(missing)["result"]["exit_status"] == 127


def test_downstream_task_chains_through_mito_new_task(live: Platform) -> None:
    downstream = {"task_spec": {"args": ["sh", "-c", 'echo "$MITO_UPSTREAM_TASK_UUID" > "$MITO_RESULT_DIR/up"']}, "labels": ["child"]}
    script = f"echo '{json.dumps(downstream)}' > \"$MITO_NEW_TASK\""
    upstream = submitted_uuid(live.mito("submit", "--", "sh", "-c", script).stdout)
    info = live.wait_task(upstream)
    assert info["result"] == {"exit_status": 0, "msg": None}
    child = info["downstream_task_uuid"]
    assert child
    child_info = live.wait_task(child)
    assert child_info["upstream_task_uuid"] == upstream and child_info["labels"] == ["child"]
    live.mito("get", "artifact", child, "result", "-o", "child.tgz")
    with tarfile.open(live.home / "child.tgz") as tar:
        assert tar.extractfile("result/up").read().decode().strip() == upstream  # type: ignore[union-attr]
