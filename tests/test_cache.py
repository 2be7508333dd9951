"""Result caching (``cache=True``) on real coordinators and workers: a submit that matches a run
that succeeded is answered at once with that run's artifacts and no worker runs it (every run
appends to a ledger, which a hit leaves alone); a change of args, environment or a resource's
content misses; ``force`` runs anyway; failed runs and other groups never answer; shared
artifacts are charged once and deleted with the last task naming them; the CLI, the magic,
sweeps, and clients that know nothing of caching."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import ADMIN, Platform, adopt_env, backend_args, http, login_env, start_platform
from mito_lab import Client, Sweep
from mito_lab.client.frames import tasks_frame
from mito_lab.wire import (
    ArtifactContentType,
    ArtifactRef,
    ArtifactSource,
    AttachmentRef,
    AttachmentSource,
    ChangeTaskReq,
    RemoteResourceDownload,
    TaskExecState,
    TaskSpec,
    TasksQueryReq,
    TaskState,
)
from test_end_to_end import submitted_uuid
from test_notebook import shell  # noqa: F401 - a fixture
from test_sweeps import EXPERIMENT

README = Path(__file__).parent.parent / "README.md"
RESULT = ArtifactContentType.result
# every run appends to $LEDGER: a cache hit must leave it as it was
RUN = ["sh", "-c", 'echo ran >> "$LEDGER"; date +%s%N > "$MITO_RESULT_DIR/stamp"; echo "$X" > "$MITO_RESULT_DIR/x"']


def runs(ledger: Path) -> int:
    return len(ledger.read_text().splitlines()) if ledger.exists() else 0


def test_a_cached_submit_is_answered_by_the_newest_run_that_succeeded(platform: Platform, client: Client, tmp_path: Path) -> None:
    platform.start_worker()
    ledger = tmp_path / "ledger"
    envs = {"LEDGER": str(ledger), "X": "1"}
    first = client.submit(RUN, envs=envs, cache=True)
    assert first.wait(timeout=60).cached_from is None and runs(ledger) == 1
    stamp = (first.result() / "stamp").read_text()
    used = client.get_group(ADMIN[0]).storage_used

    # labels, tags, priority and timeout are not what a run makes: the hit needs no worker with
    # the tag gpu (none has it), and is Finished the moment it is submitted
    hit = client.submit(RUN, envs=envs, cache=True, labels=["again"], tags=["gpu"], priority=5, timeout="1h")
    answer = client.get_task(hit.uuid)
    info = answer.info
    assert (info.state, info.result and info.result.exit_status, info.cached_from) == (TaskState.Finished, 0, first.uuid)
    assert (info.attempts, info.reporter_uuid, info.started_at, info.exec_state) == (0, None, None, None)
    assert info.labels == ["again"] and info.tags == ["gpu"]
    source_artifacts = client.get_task(first.uuid).artifacts
    assert [(a.content_type, a.size) for a in answer.artifacts] == [(a.content_type, a.size) for a in source_artifacts]
    assert hit.wait(timeout=5).cached_from == first.uuid
    assert (hit.result() / "stamp").read_text() == stamp
    assert runs(ledger) == 1  # no worker ran it
    assert client.get_group(ADMIN[0]).storage_used == used  # the same objects, charged once

    # what the task runs with differs: it runs
    other_env = client.submit(RUN, envs={**envs, "X": "2"}, cache=True)
    other_args = client.submit([*RUN[:2], RUN[2] + " # another command"], envs=envs, cache=True)
    for handle in (other_env, other_args):
        assert handle.wait(timeout=60).cached_from is None
    assert runs(ledger) == 3 and (other_env.result() / "x").read_text() == "2\n"

    # force runs anyway and is the run later lookups find; a run submitted without cache is none
    forced = client.submit(RUN, envs=envs, cache=True, force=True)
    assert forced.wait(timeout=60).cached_from is None and runs(ledger) == 4
    plain = client.submit(RUN, envs=envs)
    assert plain.wait(timeout=60).cached_from is None and runs(ledger) == 5
    newest = client.submit(RUN, envs=envs, cache=True)
    assert client.get_task(newest.uuid).info.cached_from == forced.uuid

    # a run that failed never answers
    failing = ["sh", "-c", 'echo ran >> "$LEDGER"; exit 3']
    for _ in range(2):
        ended = client.submit(failing, envs=envs, cache=True).wait(timeout=60)
        assert ended.result is not None and ended.result.exit_status == 3 and ended.cached_from is None
    assert runs(ledger) == 7

    # another group's runs never answer (no worker serves it: the task waits)
    client.create_group("elsewhere")
    away = client.submit(RUN, envs=envs, cache=True, group="elsewhere")
    away_info = client.get_task(away.uuid).info
    assert (away_info.state, away_info.cached_from) == (TaskState.Ready, None)
    client.cancel_task(away.uuid)

    # a task whose command was changed before it ran answers for neither command
    changed = client.submit(RUN, envs={**envs, "X": "changed"}, cache=True, tags=["nowhere"])
    client.change_task(changed.uuid, ChangeTaskReq(tags=[], task_spec=TaskSpec(args=["sh", "-c", RUN[2] + " # changed"], envs=envs)))
    changed.wait(timeout=60)
    for command, X in ((RUN, "changed"), ([*RUN[:2], RUN[2] + " # changed"], "1")):
        rerun = client.submit(command, envs={**envs, "X": X}, cache=True)
        assert rerun.wait(timeout=60).cached_from is None
    assert runs(ledger) == 10

    # hits are visible in every listing
    frame = client.tasks()
    hits = frame[frame["cached_from"].notna()]
    assert dict(zip(hits["uuid"], hits["cached_from"], strict=True)) == {str(hit.uuid): str(first.uuid), str(newest.uuid): str(forced.uuid)}
    paged = tasks_frame(client.query_tasks(TasksQueryReq()).tasks)
    assert list(paged["cached_from"].fillna("-")) == list(frame["cached_from"].fillna("-"))


def test_shared_artifacts_are_charged_once_and_deleted_with_the_last_task_naming_them(
    platform: Platform, client: Client, tmp_path: Path,
) -> None:
    platform.start_worker()
    ledger = tmp_path / "ledger"
    envs = {"LEDGER": str(ledger), "X": "shared"}
    source = client.submit(RUN, envs=envs, cache=True)
    source.wait(timeout=60)
    used = client.get_group(ADMIN[0]).storage_used
    size = next(a.size for a in client.get_task(source.uuid).artifacts if a.content_type == RESULT)
    copy = client.submit(RUN, envs=envs, cache=True)
    assert client.get_task(copy.uuid).info.cached_from == source.uuid and client.get_group(ADMIN[0]).storage_used == used
    original = client.download_artifact(source.uuid, RESULT, tmp_path / "original.tar.gz")
    link = client.artifact_url(copy.uuid, RESULT).url

    # the source's artifact goes: the object stays (the copy names it), charged as before, and
    # the source answers no more lookups (a hit never does): the next cached submit runs
    client.delete_artifact(source.uuid, RESULT, admin=True)
    assert client.get_group(ADMIN[0]).storage_used == used
    assert client.download_artifact(copy.uuid, RESULT, tmp_path / "copy.tar.gz").read_bytes() == original.read_bytes()
    again = client.submit(RUN, envs=envs, cache=True)
    assert again.wait(timeout=60).cached_from is None and runs(ledger) == 2
    grown = client.get_group(ADMIN[0]).storage_used
    assert grown > used

    # the last artifact naming the object goes: so do the object and its charge
    client.delete_artifact(copy.uuid, RESULT, admin=True)
    assert client.get_group(ADMIN[0]).storage_used == grown - size
    assert http("GET", link).status == 404

    # a user's upload replaces a hit's artifact: the source keeps its own, still charged once
    envs["X"] = "replaced"
    source = client.submit(RUN, envs=envs, cache=True)
    source.wait(timeout=60)
    copy = client.submit(RUN, envs=envs, cache=True)
    assert client.get_task(copy.uuid).info.cached_from == source.uuid
    original = client.download_artifact(source.uuid, RESULT, tmp_path / "original.tar.gz")
    used = client.get_group(ADMIN[0]).storage_used
    replacement = tmp_path / "replacement.tar.gz"
    replacement.write_bytes(b"x" * 1000)
    client.upload_artifact(copy.uuid, RESULT, replacement)
    assert client.get_group(ADMIN[0]).storage_used == used + 1000
    assert client.download_artifact(source.uuid, RESULT, tmp_path / "kept.tar.gz").read_bytes() == original.read_bytes()
    # ... and replaces the source's: its object goes with its charge, and the run answers no more
    client.upload_artifact(source.uuid, RESULT, replacement)
    assert client.get_group(ADMIN[0]).storage_used == used + 1000 + 1000 - len(original.read_bytes())
    assert client.submit(RUN, envs=envs, cache=True).wait(timeout=60).cached_from is None and runs(ledger) == 4


@pytest.fixture(params=["postgres-local", "sqlite-s3"])
def stored(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Platform, Client]]:
    """A platform with a worker, on each object store (their digests come from different places)."""
    platform = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    try:
        adopt_env(platform, monkeypatch)
        monkeypatch.chdir(tmp_path)
        platform.start_worker()
        with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
            yield platform, client
    finally:
        platform.stop()


def test_resources_are_keyed_by_their_content(stored: tuple[Platform, Client], tmp_path: Path) -> None:
    platform, client = stored
    ledger = tmp_path / "ledger"
    envs = {"LEDGER": str(ledger)}
    data = tmp_path / "data.txt"

    def upload(content: str) -> None:
        data.write_text(content)
        client.upload_attachment(ADMIN[0], data, "inputs/data.txt")

    attachment = RemoteResourceDownload(remote_file=AttachmentSource(Attachment=AttachmentRef(key="inputs/data.txt")), local_path="data.txt")
    copy = ["sh", "-c", 'echo ran >> "$LEDGER"; cp "$MITO_RESOURCE_DIR/data.txt" "$MITO_RESULT_DIR/"']

    def submit() -> tuple[uuid.UUID, uuid.UUID | None, str]:
        handle = client.submit(copy, envs=envs, cache=True, resources=[attachment])
        return handle.uuid, handle.wait(timeout=60).cached_from, (handle.result() / "data.txt").read_text()

    upload("first")
    source, cached_from, content = submit()
    assert (cached_from, content) == (None, "first")
    assert submit()[1:] == (source, "first") and runs(ledger) == 1
    upload("second")  # the same key, another content: a miss
    assert submit()[1:] == (None, "second") and runs(ledger) == 2
    upload("first")  # a new object with the first content: the first run answers
    assert submit()[1:] == (source, "first") and runs(ledger) == 2

    # an upstream artifact, by its content: a hit's artifact is its source's
    upstream = client.submit(RUN, envs={**envs, "X": "up"}, cache=True)
    upstream.wait(timeout=60)
    upstream_hit = client.submit(RUN, envs={**envs, "X": "up"}, cache=True)
    assert client.get_task(upstream_hit.uuid).info.cached_from == upstream.uuid and runs(ledger) == 3
    unpack = ["sh", "-c", 'echo ran >> "$LEDGER"; tar -xzOf "$MITO_RESOURCE_DIR/up.tar.gz" result/x > "$MITO_RESULT_DIR/got"']

    def downstream(of: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID | None, str]:
        result = RemoteResourceDownload(remote_file=ArtifactSource(Artifact=ArtifactRef(uuid=of, content_type=RESULT)), local_path="up.tar.gz")
        handle = client.submit(unpack, envs=envs, cache=True, resources=[result])
        return handle.uuid, handle.wait(timeout=60).cached_from, (handle.result() / "got").read_text()

    first_downstream, cached_from, got = downstream(upstream.uuid)
    assert (cached_from, got, runs(ledger)) == (None, "up\n", 4)
    assert downstream(upstream_hit.uuid)[1:] == (first_downstream, "up\n") and runs(ledger) == 4
    rerun = client.submit(RUN, envs={**envs, "X": "up"}, cache=True, force=True)  # another result: its stamp differs
    rerun.wait(timeout=60)
    assert downstream(rerun.uuid)[1:] == (None, "up\n") and runs(ledger) == 6

    # a task watching a hit sees it ended: it runs
    watcher = client.submit(["true"], watch=(upstream_hit.uuid, TaskExecState.ExecSpawned))
    ended = watcher.wait(timeout=60)
    assert ended.result is not None and (ended.state, ended.result.exit_status) == (TaskState.Finished, 0)


STAMP = ["sh", "-c", 'date +%s%N > "$MITO_RESULT_DIR/stamp"']


def test_clients_written_for_the_reference_see_nothing_new(sqlite_platform: Platform) -> None:
    platform = sqlite_platform
    platform.start_worker()
    body = {"task_spec": {"args": STAMP}}
    first = platform.api("POST", "/tasks", {**body, "cache": True}).json
    assert set(first) == {"task_id", "uuid"}  # a miss answers as ever
    platform.wait_task(first["uuid"])
    plain = platform.api("POST", "/tasks", body).json  # no field, no lookup: it runs
    assert set(plain) == {"task_id", "uuid"}
    assert platform.wait_task(plain["uuid"])["reporter_uuid"] is not None
    hit = platform.api("POST", "/tasks", {**body, "cache": True}).json
    assert hit["cached_from"] == first["uuid"] and platform.api("GET", f"/tasks/{hit['uuid']}").json["info"]["cached_from"] == first["uuid"]

    # the batch route takes it per task
    batch = platform.api("POST", "/tasks/submit", {"tasks": [{**body, "cache": True}, body, {**body, "cache": True, "force": True}]})
    results = [item["Ok"] for item in batch.json["results"]]
    assert results[0]["cached_from"] == first["uuid"] and set(results[1]) == set(results[2]) == {"task_id", "uuid"}

    # strict flags, as every flag of the API; the contract says what they mean
    for wrong in ({"cache": "yes"}, {"force": 1}):
        refused = platform.api("POST", "/tasks", {**body, **wrong})
        assert refused.status == 400 and next(iter(wrong)) in refused.json["msg"]
    schemas = json.loads(http("GET", f"{platform.url}/openapi.json").body)["components"]["schemas"]
    assert {"cache", "force"} <= set(schemas["SubmitTaskReq"]["properties"])
    assert "cached_from" in schemas["SubmitTaskResp"]["properties"] and "cached_from" in schemas["TaskInfo"]["properties"]


def test_the_cli_the_magic_and_the_readme_example(
    sqlite_platform: Platform, shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811 - the fixture
) -> None:
    platform = sqlite_platform
    platform.start_worker()
    command = ["--", *STAMP]
    first = submitted_uuid(platform.mito("submit", "--cache", *command).stdout)
    platform.wait_task(first)
    answered = platform.mito("submit", "--cache", "-l", "again", *command).stdout
    hit = submitted_uuid(answered)
    assert f"a cache hit, Finished with the artifacts of {first}" in answered
    assert f"cached:     a cache hit of {first}" in platform.mito("get", "task", hit).stdout
    assert f"it has ended: Finished, exit status 0, a cache hit of {first}" in platform.mito("why", hit).stdout
    listed = platform.mito("get", "tasks").stdout
    assert re.search(rf"^{hit}\s+Finished\s+0 \(cache hit\)\s+again", listed, re.MULTILINE)
    assert re.search(rf"^{first}\s+Finished\s+0\s", listed, re.MULTILINE)

    forced_output = platform.mito("submit", "--cache", "--force", *command).stdout
    forced = submitted_uuid(forced_output)
    assert "cache hit" not in forced_output and platform.wait_task(forced)["reporter_uuid"] is not None
    tree = platform.mito("tasks", "submit", "--cache", *command).stdout  # the reference's command tree
    assert f"the artifacts of {forced}" in tree

    adopt_env(platform, monkeypatch, **login_env(platform))
    monkeypatch.chdir(tmp_path)
    handle = shell.run_line_magic("mito", "submit --cache -- " + " ".join(map(repr, STAMP)))
    assert handle.info.cached_from is not None and str(handle.info.cached_from) == forced

    text = README.read_text()
    section = text[text.index("**Cached reruns.**"):]
    example = section[section.index("```python\n") + len("```python\n"):]
    with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
        exec(example[:example.index("```")], {"client": client})  # its asserts hold


def test_an_extended_sweep_runs_only_the_new_combinations(sqlite_platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    platform = sqlite_platform
    adopt_env(platform, monkeypatch)
    monkeypatch.chdir(tmp_path)
    platform.start_worker()
    with Client(platform.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
        first = Sweep.launch(client, EXPERIMENT, {"lr": [0.1, 0.01], "seed": [1]}, cache=True).wait(timeout=240)
        before = first.results()
        # extended from the command line: the same runs as the SDK's
        platform.mito("sweep", str(EXPERIMENT), "-p", "lr", "0.1,0.01,0.001", "-p", "seed", "1", "--cache", "-n", "extended")
        extended = Sweep.reopen(client, "extended")
        assert extended.counts()["Succeeded"] >= 2  # the old combinations are done the moment they are submitted
        results = extended.wait(timeout=240).results()
        assert list(results["lr"]) == [0.1, 0.01, 0.001] and list(results["exit_status"]) == [0, 0, 0]
        assert list(results["cached_from"].iloc[:2]) == list(before["uuid"]) and pd.isna(results["cached_from"].iloc[2])
        same = ["final_loss", "best_loss", "duration", "cpu_s", "max_rss"]  # what the runs made, and cost
        assert results.iloc[:2][same].reset_index(drop=True).equals(before[same].reset_index(drop=True))
        assert all(Path(notebook).is_file() for notebook in results["notebook"])
        ran = client.tasks(labels=[extended.label])
        assert ran["worker"].notna().sum() == 1  # one new run; the others no worker ran

