"""The wire contract: what the reference's clients send must parse, bad input must not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from mito_lab import wire


def test_reference_timestamp_form_is_accepted_and_iso_is_emitted() -> None:
    info = wire.ArtifactInfo.model_validate(
        {"content_type": "result", "size": 1, "created_at": "2024-01-15 10:30:00.123456 +00:00:00", "updated_at": "2024-01-15T10:30:00+02:00"}
    )
    assert info.created_at == datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=timezone.utc)
    assert info.model_dump(mode="json")["created_at"] == "2024-01-15T10:30:00.123456+00:00"
    assert info.model_dump(mode="json")["updated_at"] == "2024-01-15T10:30:00+02:00"


def test_enums_accept_the_reference_aliases() -> None:
    assert wire.Role("write") is wire.Role.Write and wire.Role("ADMIN") is wire.Role.Admin
    assert wire.ArtifactContentType("terminal") is wire.ArtifactContentType.std_log
    assert wire.ArtifactContentType("ExecLog") is wire.ArtifactContentType.exec_log
    assert wire.TaskState("finished") is wire.TaskState.Finished
    assert wire.TaskExecState.ExecSpawned.code == 11 and wire.TaskExecState.WorkerExited.code == -1
    assert wire.TaskExecState.TaskCommitted.code == 19 and wire.TaskExecState.Unknown.code == -99
    with pytest.raises(ValueError):
        wire.Role("owner")


def test_submit_defaults_and_durations() -> None:
    request = wire.SubmitTaskReq.model_validate({"task_spec": {"args": ["echo"]}, "timeout": "1h 30m", "tags": ["a", "a", "b"]})
    assert request.timeout == timedelta(minutes=90) and request.tags == ["a", "b"]
    assert request.model_dump(mode="json")["timeout"] == "1h 30m"
    assert request.task_spec.watch is None and request.priority == 0


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "a/\x00"])
def test_resource_paths_must_stay_inside(path: str) -> None:
    with pytest.raises(ValidationError, match="absolute or contains"):
        wire.RemoteResourceDownload.model_validate({"remote_file": {"Attachment": {"key": "k"}}, "local_path": path})


def test_resources_are_externally_tagged() -> None:
    spec = wire.TaskSpec.model_validate({
        "args": ["x"],
        "resources": [
            {"remote_file": {"Artifact": {"uuid": "3f1f5a8e-0000-4000-8000-000000000000", "content_type": "result"}}, "local_path": "in/a.tgz"},
            {"remote_file": {"Attachment": {"key": "data/set.csv"}}, "local_path": "set.csv"},
        ],
        "watch": ["3f1f5a8e-0000-4000-8000-000000000000", "ExecSpawned"],
    })
    assert isinstance(spec.resources[0].remote_file, wire.ArtifactSource)
    assert isinstance(spec.resources[1].remote_file, wire.AttachmentSource)
    assert spec.watch is not None and spec.watch[1] is wire.TaskExecState.ExecSpawned


def test_report_operations() -> None:
    assert wire.ReportTaskReq.model_validate({"id": 1, "op": "Finish"}).op == "Finish"
    commit = wire.ReportTaskReq.model_validate({"id": 1, "op": {"Commit": {"exit_status": 3, "msg": "ExecTimeout"}}}).op
    assert isinstance(commit, wire.CommitOp) and commit.Commit.msg is wire.TaskResultMessage.ExecTimeout
    upload = wire.ReportTaskReq.model_validate({"id": 1, "op": {"Upload": {"content_type": "std", "content_length": 0}}}).op
    assert isinstance(upload, wire.UploadOp) and upload.Upload.content_type is wire.ArtifactContentType.std_log
    for bad in ("Explode", {"Commit": {}}, {"Upload": {"content_type": "result", "content_length": -1}}):
        with pytest.raises(ValidationError):
            wire.ReportTaskReq.model_validate({"id": 1, "op": bad})


def test_password_forms() -> None:
    assert wire.LoginReq(username="u", password="pw").digest() == bytes(wire.md5_password("pw"))
    with pytest.raises(ValidationError):
        wire.LoginReq.model_validate({"username": "u", "md5_password": [1] * 15})
    with pytest.raises(ValidationError):
        wire.LoginReq.model_validate({"username": "u", "md5_password": [256] * 16})
