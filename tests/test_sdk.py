"""The SDK as a notebook uses it: the synchronous ``Client``, typed DataFrames (from the columnar
listing, or page by page from a coordinator without it), task handles (wait, result, logs, cancel,
await), the event stream, and transfers."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mito_lab
import mito_lab.client
import mito_lab.client.api
from conftest import ADMIN, Platform, adopt_env, login_env
from mito_lab import Client, MitoError
from mito_lab.client.api import task_request
from mito_lab.client.frames import MISSING, TASK_COLUMNS, tasks_frame
from mito_lab.testing import wait_until
from mito_lab.wire import TaskInfo, TaskState, TasksQueryReq


def test_listings_are_typed_dataframes(platform: Platform, client: Client) -> None:
    platform.start_worker("-t", "cpu")
    handles = [client.submit(["sh", "-c", f"exit {n % 2}"], labels=["sweep", f"n{n}"], tags=["cpu"]) for n in range(5)]
    for handle in handles:
        handle.wait(timeout=60)

    tasks = client.tasks()
    assert list(tasks.columns) == TASK_COLUMNS
    assert TASK_COLUMNS[:7] == ["uuid", "state", "exit_status", "command", "labels", "duration", "created_at"]
    assert list(tasks["uuid"]) == [str(h.uuid) for h in reversed(handles)]  # newest first, none twice
    assert isinstance(tasks["state"].dtype, pd.CategoricalDtype) and list(tasks["state"].cat.categories) == [s.value for s in TaskState]
    assert tasks["state"].cat.ordered  # the README's promise: states sort and compare in their order
    assert list(tasks["state"] < "Finished") == list(tasks["state"].astype(str).isin(["Pending", "Ready", "Running"]))
    assert set(tasks["state"]) == {"Finished"}
    assert str(tasks["created_at"].dtype).startswith("datetime64") and str(tasks["created_at"].dt.tz) == "UTC"
    assert tasks["exit_status"].dtype == "Int64" and list(tasks["exit_status"]) == [0, 1, 0, 1, 0]
    assert (tasks["duration"] >= pd.Timedelta(0)).all() and tasks["duration"].dtype.kind == "m"
    assert tasks["timeout"].iloc[0] == pd.Timedelta(minutes=10)
    assert tasks["tags"].iloc[0] == ["cpu"] and tasks["labels"].iloc[0] == ["sweep", "n4"]
    assert tasks["command"].iloc[1] == "sh -c 'exit 1'"

    assert len(client.tasks(limit=3)) == 3
    assert list(client.tasks(labels=["n1"])["uuid"]) == [str(handles[1].uuid)]
    assert len(client.tasks(exit_status="!=0")) == 2
    assert client.tasks(states=["Ready"]).empty and list(client.tasks(states=["Ready"]).columns) == TASK_COLUMNS

    # displayed readably, the data as it is: durations in seconds, one missing-value marker, no maths
    chosen = tasks[["command", "duration", "msg"]]  # a selection displays the same way
    for shown in (tasks._repr_html_(), chosen._repr_html_(), repr(chosen)):
        assert re.search(r"\b\d+\.\d s\b", shown) and "0 days" not in shown
        assert MISSING in shown and not any(marker in shown for marker in ("NaT", "&lt;NA&gt;", "<NA>", "None", "NaN"))
    assert 'class="dataframe tex2jax_ignore mathjax_ignore mito-frame"' in tasks._repr_html_()
    workers = client.workers(tags=["cpu"])
    assert len(workers) == 1 and workers["state"].iloc[0] == "Normal" and workers["tags"].iloc[0] == ["cpu"]
    assert str(workers["last_heartbeat"].dt.tz) == "UTC"
    groups = client.groups()
    assert groups.to_dict("records") == [{"group": ADMIN[0], "role": "Admin"}]


def test_a_batch_announces_each_task_and_runs_where_its_tags_match(platform: Platform, client: Client) -> None:
    seen: list[dict[str, Any]] = []
    stop = client.run(client.aio.listen(seen.append))
    batch = [task_request(["true"], tags=["gpu"] if n % 2 else [], labels=[f"n{n}"]) for n in range(40)]
    uuids = [str(handle.uuid) for handle in client.submit_many(batch)]

    def announced() -> set[str]:
        return {event["uuid"] for event in list(seen) if event.get("kind") == "task" and event.get("state") == "Ready"}

    wait_until(lambda: announced() >= set(uuids), "an event per task of the batch")
    stop()
    platform.start_worker()  # untagged: it may run only the untagged half
    wait_until(lambda: len(client.tasks(states=["Finished"])) == 20, "the untagged tasks to run")
    ready = client.tasks(states=["Ready"])
    assert set(ready["uuid"]) == set(uuids[1::2]) and all(tags == ["gpu"] for tags in ready["tags"])


def test_the_columnar_listing_makes_the_frame_of_the_json_one(platform: Platform, client: Client) -> None:
    platform.start_worker("-t", "cpu")
    finished = [client.submit(["sh", "-c", f"exit {n}"], labels=["mix", f"n{n}"], tags=["cpu"]) for n in range(3)]
    for handle in finished:
        handle.wait(timeout=60)
    client.submit(["echo", "it's", "queued"], tags=["nobody-has-this"], priority=4, labels=["mix"]).cancel()
    client.submit_many([task_request(["true"], tags=["nobody-has-this"], timeout="2h", labels=["mix"]) for _ in range(3)])
    for filters in ({}, {"labels": ["mix"], "limit": 4}, {"states": ["Finished"]}, {"exit_status": ">0"}, {"labels": ["none"]}):
        json_frame = tasks_frame(client.query_tasks(TasksQueryReq(**filters)).tasks)
        pd.testing.assert_frame_equal(client.tasks(**filters), json_frame, check_exact=True)  # columns, dtypes, values


def test_an_older_coordinator_is_listed_page_by_page_into_the_same_frame(
    old_coordinator: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous release has no columnar route: the SDK pages through the JSON one (two tasks a
    page here), and its local store's URLs are relative. Restarted as this release on the same
    database, the coordinator answers the same DataFrame through the columnar route."""
    adopt_env(old_coordinator, monkeypatch)
    monkeypatch.setattr(mito_lab.client.api, "PAGE_SIZE", 2)
    assert old_coordinator.api("POST", "/tasks/query/columns", {}).status == 404  # it really is the old one
    old_coordinator.start_worker("-t", "cpu")
    with Client(old_coordinator.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
        for handle in [client.submit(["sh", "-c", f"exit {n}"], labels=["old", f"n{n}"], tags=["cpu"]) for n in range(3)]:
            handle.wait(timeout=60)
        client.submit(["true"], tags=["nobody-has-this"]).cancel()
        client.submit(["echo", "it's", "queued"], tags=["nobody-has-this"], priority=4)
        paged = client.tasks()
        assert len(paged) == 5 and len(client.tasks(limit=3)) == 3
        # its local store's URLs are relative to it: the SDK still follows them
        (tmp_path / "kept.txt").write_text("kept")
        client.upload_attachment(ADMIN[0], tmp_path / "kept.txt", "kept.txt", progress=False)
        assert client.download_attachment(ADMIN[0], "kept.txt", tmp_path / "old", progress=False).read_text() == "kept"
    old_coordinator.stop()
    old_coordinator.start_coordinator()
    with Client(old_coordinator.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
        assert old_coordinator.api("POST", "/tasks/query/columns", {}).status == 200
        pd.testing.assert_frame_equal(client.tasks(), paged, check_exact=True)
        assert client.download_attachment(ADMIN[0], "kept.txt", tmp_path / "new", progress=False).read_text() == "kept"


def test_attachments_listing_and_transfers(platform: Platform, client: Client, tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "c.bin"):
        (tmp_path / name).write_text(name * 100)
        client.upload_attachment(ADMIN[0], tmp_path / name, f"data/{name}", progress=False)
    listing = client.attachments()
    assert list(listing["key"]) == ["data/a.txt", "data/b.txt", "data/c.bin"]
    assert list(listing["size"]) == [500, 500, 500] and listing["size"].dtype == "int64"
    assert list(client.attachments(key=".txt")["key"]) == ["data/a.txt", "data/b.txt"]
    seen: list[int] = []
    target = client.download_attachment(ADMIN[0], "data/c.bin", tmp_path / "back", progress=seen.append)
    assert target.read_text() == "c.bin" * 100 and sum(seen) == 500


def test_a_task_handle_waits_returns_its_result_output_and_can_be_awaited(platform: Platform, client: Client, tmp_path: Path) -> None:
    platform.start_worker()
    handle = client.submit('echo "hello from $MITO_TASK_UUID"; echo 42 > "$MITO_RESULT_DIR/answer.txt"', labels=["demo"])
    assert handle.state in (TaskState.Ready, TaskState.Running, TaskState.Finished)
    seen: list[tuple[str, str | None]] = []
    info = client.wait_task(handle.uuid, 60, lambda i: seen.append((i.state.value, i.exec_state and i.exec_state.value)))
    assert info.state == TaskState.Finished and info.result is not None and info.result.exit_status == 0
    assert seen[-1] == ("Finished", "TaskCommitted") and len(seen) == len(set(seen))  # each change once
    final = handle.wait(timeout=5)
    assert isinstance(final, TaskInfo) and final.state == TaskState.Finished and final.result == info.result
    card = final._repr_html_()  # a notebook shows it as the task's card, not as a raw repr
    assert "Finished" in card and str(handle.uuid) in card and re.search(r"run time</th><td[^>]*>\d+\.\d s<", card)
    assert repr(final).startswith(f"<Task {handle.uuid} · Finished · ") and "0 days" not in repr(final)
    result = handle.result()
    assert (result / "answer.txt").read_text() == "42\n"
    assert handle.result() == result  # cached
    assert handle.logs() == f"hello from {handle.uuid}\n"

    async def awaited() -> object:
        return await client.task(handle.uuid)

    assert asyncio.run(awaited()).state == TaskState.Finished  # type: ignore[attr-defined]
    own = handle.result(tmp_path / "mine")
    assert own == tmp_path / "mine" / "result" and (own / "answer.txt").exists()


def test_cancel_timeout_and_a_missing_result_are_clear(platform: Platform, client: Client) -> None:
    idle = client.submit(["true"], tags=["nobody-has-this"])
    with pytest.raises(TimeoutError, match="still Ready"):
        idle.wait(timeout=0.5)
    idle.cancel()
    info = idle.wait(timeout=30)
    assert info.state == TaskState.Cancelled and info.result and info.result.msg and info.result.msg.value == "UserCancellation"
    with pytest.raises(MitoError, match="has no result artifact: it ended Cancelled with exit status 0, UserCancellation") as raised:
        idle.result()
    assert raised.value._render_traceback_() == [f"MitoError: {raised.value}"]  # IPython shows this one line
    with pytest.raises(MitoError, match="not found|Not Found|does not exist"):
        client.task("00000000-0000-0000-0000-000000000000").refresh()

    platform.start_worker()
    running = client.submit(["sleep", "600"])
    for event in client.events():  # the stream tells us when it runs
        if event.get("uuid") == str(running.uuid) and event.get("state") == "Running":
            break
    running.cancel()
    done = running.wait(timeout=30)
    assert done.state == TaskState.Cancelled and done.result and done.result.exit_status == -15


def test_login_needs_credentials_somewhere(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adopt_env(platform, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MitoError, match="not logged in"):
        Client(platform.url, credential_path=tmp_path / "none")
    with pytest.raises(MitoError, match="Wrong credentials"):
        Client(platform.url, ADMIN[0], "wrong", credential_path=tmp_path / "none")
    for name, value in login_env(platform).items():
        monkeypatch.setenv(name, value)
    with Client(credential_path=tmp_path / "saved") as from_environment:
        assert from_environment.whoami() == ADMIN[0]
    monkeypatch.delenv("MITO_PASSWORD")
    with Client(credential_path=tmp_path / "saved") as from_saved_token:  # the token saved above
        assert from_saved_token.username == ADMIN[0]


@pytest.fixture
def sqlite_client(sqlite_platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """The client of a coordinator on SQLite, for what does not depend on the database."""
    adopt_env(sqlite_platform, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with Client(sqlite_platform.url, *ADMIN, credential_path=tmp_path / "credentials") as connected:
        yield connected


def test_submit_many_takes_what_submit_takes(sqlite_platform: Platform, sqlite_client: Client) -> None:
    sqlite_platform.start_worker()
    request = mito_lab.SubmitTaskReq(task_spec=mito_lab.TaskSpec(args=["sh", "-c", "exit 2"]), labels=["a-request"])
    mixed = sqlite_client.submit_many(["echo hi", ["echo", "an argv"], request])
    labelled = sqlite_client.submit_many(["true", "echo hi"], labels=["many"], priority=3)
    ended = [handle.wait(timeout=60) for handle in [*mixed, *labelled]]  # type: ignore[union-attr]
    assert [info.spec.args for info in ended] == [
        ["bash", "-c", "echo hi"], ["echo", "an argv"], ["sh", "-c", "exit 2"], ["bash", "-c", "true"], ["bash", "-c", "echo hi"]]
    assert [info.result.exit_status for info in ended] == [0, 0, 2, 0, 0]  # type: ignore[union-attr]
    assert ended[2].labels == ["a-request"] and all(info.labels == ["many"] and info.priority == 3 for info in ended[3:])
    assert mixed[0].logs() == "hi\n"  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="go in the request itself"):
        sqlite_client.submit_many(["true", request], labels=["many"])


def test_reruns_change_limits_and_placement_and_keep_their_link(sqlite_platform: Platform, sqlite_client: Client) -> None:
    sqlite_platform.start_worker("--tags", "big")
    slow = sqlite_client.submit(["sleep", "5"], timeout="1s", labels=["train", "lr=0.1"], envs={"A": "1"})
    assert slow.wait(timeout=60).result.msg.value == "ExecTimeout"  # type: ignore[union-attr]
    [again] = sqlite_client.rerun(slow.uuid, timeout="x10", tags=["big"], envs={"B": "2"})
    info = again.wait(timeout=60)  # type: ignore[union-attr]
    assert info.result.exit_status == 0 and info.result.msg is None and info.timeout == 10 and info.tags == ["big"]  # type: ignore[union-attr]
    assert sorted(info.labels) == sorted(["train", "lr=0.1", f"mito-rerun-of:{slow.uuid}"]) and info.spec.envs == {"A": "1", "B": "2"}
    # by a filter: the reruns of a rerun replace the run before, not the first one
    [third] = sqlite_client.rerun(mito_lab.TasksQueryReq(labels=["train"], exit_status="=0"))
    labels = third.wait(timeout=60).labels  # type: ignore[union-attr]
    assert f"mito-rerun-of:{again.uuid}" in labels and f"mito-rerun-of:{slow.uuid}" not in labels  # type: ignore[union-attr]
    with pytest.raises(MitoError, match="no task to run again"):
        sqlite_client.rerun(mito_lab.TasksQueryReq(labels=["nothing"]))
    # the CLI's
    printed = sqlite_platform.mito("rerun", str(slow.uuid), "--timeout", "x3", "-t", "big").stdout
    assert re.fullmatch(rf"Submitted task \S+ \(#\d+\) replacing {slow.uuid}\n", printed)
    refused = sqlite_platform.mito("rerun", str(slow.uuid), "--timeout", "x0", check=False)
    assert refused.returncode == 2 and "a factor is written x2" in refused.stderr


def test_the_output_of_a_running_task_is_there_while_it_runs(sqlite_platform: Platform, sqlite_client: Client) -> None:
    """A Python task's prints reach ``logs()`` while it runs, on a worker whose environment does
    not ask for unbuffered output (as a worker started by hand has none)."""
    sqlite_platform.start_worker(env={"PYTHONUNBUFFERED": ""})
    running = sqlite_client.submit(["python3", "-c", "import time; print('epoch 1'); time.sleep(600)"])
    try:
        wait_until(lambda: running.logs() == "epoch 1\n", "the task's first line while it runs", timeout=30)
        assert running.state == TaskState.Running
    finally:
        running.cancel()


BLOCKED_IMPORTS = ("ipywidgets", "mito_lab.magics", "mito_lab.sweeps")
USE_THE_SDK_WITHOUT_THE_NOTEBOOK_LAYER = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # importing it now fails
import mito_lab.client
for module in pkgutil.iter_modules(mito_lab.client.__path__):
    importlib.import_module("mito_lab.client." + module.name)
from mito_lab import Client
with Client({url!r}, {user!r}, {password!r}, credential_path={credentials!r}) as client:
    handle = client.submit("echo hi", tags=["nobody-has-this"])
    assert str(handle.uuid) in client.tasks()._repr_html_()
print("the SDK works without", ", ".join({blocked!r}))
"""


def test_the_sdk_does_not_know_the_notebook_layer(sqlite_platform: Platform, tmp_path: Path) -> None:
    """Layers point one way: magics, widgets and sweeps build on ``mito_lab.client``, which imports
    none of them, not even inside a function; the SDK imports and works with them unimportable."""
    for path in sorted(Path(mito_lab.client.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            wrong = [name for name in names if name.startswith(BLOCKED_IMPORTS)]
            assert not wrong, f"{path.name}:{node.lineno} imports {wrong} (the notebook layer)"
    script = USE_THE_SDK_WITHOUT_THE_NOTEBOOK_LAYER.format(
        blocked=BLOCKED_IMPORTS, url=sqlite_platform.url, user=ADMIN[0], password=ADMIN[1], credentials=str(tmp_path / "credentials"))
    done = subprocess.run([sys.executable, "-c", script], env=sqlite_platform.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "the SDK works without ipywidgets, mito_lab.magics, mito_lab.sweeps" in done.stdout
