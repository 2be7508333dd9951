"""The dashboard's kernel side, driven in-process: the rows and counts it keeps, the actions the
page asks for (logs, cancel, result), the workers, the coalescing of events into few updates of
the page, and the static snapshot a saved notebook shows. The page itself is tested in a real
browser (``test_browser.py``); the widget in a real kernel in ``test_notebook.py``."""

from __future__ import annotations

import functools
import gc
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ADMIN, Platform
from mito_lab import Client
from mito_lab.magics.dashboard import FLUSH_SECONDS, Dashboard
from mito_lab.testing import wait_until
from mito_lab.wire import SubmitTaskReq, TaskSpec

eventually = functools.partial(wait_until, timeout=60, interval=0.05)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def ask(board: Dashboard, action: str, task: Any, **extra: str) -> None:
    """What the page sends when a row's button is clicked."""
    board._on_page_message(board, {"action": action, "uuid": str(task), **extra}, [])


def count(board: Dashboard, state: str) -> int:
    return (board.summary.get("counts") or {}).get(state, 0)


def test_dashboard_actions_counts_and_workers(platform: Platform, client: Client, tmp_path: Path) -> None:
    board = Dashboard(client)
    try:
        assert board.group == ADMIN[0] and board.store.rows == {}
        platform.start_worker("-t", "cpu")
        eventually(lambda: any("cpu" in worker["tags"] for worker in board.workers), "the worker")
        talker = client.submit('for i in 1 2 3; do echo "line $i"; done; echo done > "$MITO_RESULT_DIR/r.txt"', labels=["talk"])
        sleeper = client.submit(["sleep", "600"], labels=["sleep"])
        talker_id, sleeper_id = str(talker.uuid), str(sleeper.uuid)
        eventually(lambda: talker_id in board.store and board.store.value(talker_id, "result"), "the first task's result")
        eventually(lambda: any(worker["task"] == sleeper_id for worker in board.workers), "the worker's current task")
        assert count(board, "Finished") == 1 and count(board, "Running") == 1
        assert board.store.value(talker_id, "labels") == "talk" and not board.store.value(talker_id, "cancellable")
        assert board.store.value(sleeper_id, "cancellable") and not board.store.value(sleeper_id, "result")

        # what the run cost, from the event of its commit, and the same from a fresh read
        eventually(lambda: board.store.value(talker_id, "rss"), "the first task's cost")
        cost = [board.store.value(talker_id, column) for column in ("cpu", "rss", "efficiency")]
        assert cost[0] >= 0 and cost[1] > 0 and 0 <= cost[2]
        client.run(board.reload())
        assert [board.store.value(talker_id, column) for column in ("cpu", "rss", "efficiency")] == pytest.approx(cost)

        ask(board, "logs", talker.uuid)
        eventually(lambda: board.log_text == "line 1\nline 2\nline 3\n", "the task's output")
        stuck = client.submit(["true"], tags=["gpu"])  # no worker has the tag: it waits, and the board says why
        ask(board, "why", stuck.uuid)
        eventually(lambda: board.task_log["stream"] == "why", "the explanation")
        assert board.log_text.startswith(f"Task {stuck.uuid} (Ready): ") and "gpu" in board.log_text
        stuck.cancel()
        eventually(lambda: count(board, "Cancelled") == 1, "the waiting task cancelled")
        ask(board, "result", talker.uuid)
        eventually(lambda: "unpacked" in board.status, "where the result went")
        assert (tmp_path / "mito-results" / talker_id / "result" / "r.txt").read_text() == "done\n"

        ask(board, "cancel", sleeper.uuid)
        eventually(lambda: count(board, "Cancelled") == 2, "the cancelled task counted")
        assert sleeper.wait(timeout=30).state.value == "Cancelled"
        eventually(lambda: all(worker["task"] is None for worker in board.workers), "the worker idle again")
        eventually(lambda: not board.store.value(sleeper_id, "cancellable"), "no cancel on an ended task")
        assert board.summary["progress"] == {"done": 1, "failed": 2, "running": 0, "waiting": 0}

        ask(board, "reboot", sleeper.uuid)
        assert "unknown" in board.status
        ask(board, "logs", "not-a-uuid")
        assert "not a task uuid" in board.status
    finally:
        board.close()
    assert not board.live


def test_a_burst_of_events_is_one_update_of_the_page(platform: Platform, client: Client) -> None:
    """A thousand events at once (tasks finishing together) reach the page as one update, with
    every row and count right; the display bundle's HTML fallback shows the same."""
    client.submit_many([SubmitTaskReq(task_spec=TaskSpec(args=["true"]), labels=["burst"]) for _ in range(300)])
    board = Dashboard(client)
    try:
        eventually(lambda: count(board, "Ready") == 300, "the waiting tasks")
        board._stop_listening()  # from here on the events are delivered by hand, together
        before = board.rev
        now = "2030-01-01T00:00:00+00:00"
        events = []
        for task in list(board.store.rows):
            common = {"kind": "task", "uuid": task, "group": ADMIN[0], "attempts": 1, "cancel_requested": False, "started_at": now}
            events += [
                {**common, "state": "Running", "exec_state": "ExecSpawned", "archived": False, "exit_status": None, "msg": None, "ended_at": None},
                {**common, "state": "Running", "exec_state": "ExecFinished", "archived": False, "exit_status": None, "msg": None, "ended_at": None},
                {**common, "state": "Finished", "exec_state": "TaskCommitted", "archived": True, "exit_status": 0 if task[0] < "8" else 2,
                 "msg": None, "ended_at": "2030-01-01T00:00:01+00:00"},
            ]
        client._thread.call_soon(lambda: [board._on_event(event) for event in events])
        eventually(lambda: count(board, "Finished") == 300, "every task Finished")
        time.sleep(3 * FLUSH_SECONDS)  # a second update, had one been due, would have come by now
        assert board.rev == before + 1, f"{len(events)} events made {board.rev - before} updates"
        failed = sum(1 for task in board.store.rows if board.store.value(task, "exit") == 2)
        assert board.summary["progress"] == {"done": 300 - failed, "failed": failed, "running": 0, "waiting": 0}
        assert {board.store.value(task, "state") for task in board.store.rows} == {"Finished"}

        snapshot = board._snapshot_bundle()["text/html"]
        assert "Finished 300" in snapshot and f"300/300 · {300 - failed} done · {failed} failed · 0 running · 0 waiting" in snapshot
    finally:
        board.close()
    assert "Finished 300" in board.snapshot_html() and "stopped" in board.snapshot_html()


def test_events_of_a_task_first_seen_in_a_burst_leave_no_background_error(client: Client) -> None:
    """Two events of a task the dashboard has not read yet arrive together (as a fast worker's
    do): it is read, shown, and nothing fails in the background."""
    problems: list[dict[str, Any]] = []
    loop = client._thread.loop
    loop.call_soon_threadsafe(loop.set_exception_handler, lambda _loop, context: problems.append(context))
    board = Dashboard(client)
    try:
        board._stop_listening()  # the events below are delivered by hand, together
        handle = client.submit(["true"])
        event = {"kind": "task", "uuid": str(handle.uuid), "group": ADMIN[0], "state": "Ready", "archived": False}
        loop.call_soon_threadsafe(lambda: [board._on_event(dict(event)) for _ in range(2)])
        eventually(lambda: str(handle.uuid) in board.store, "the task's row")
        time.sleep(0.5)  # a second read, had one started, would have ended by now
    finally:
        board.close()
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert problems == []
