"""The dashboard's behaviour, driven in-process as a person would: filters, counts, the per-task
cancel, result and logs buttons, and the workers tab (the kernel tests show it stays live)."""

from __future__ import annotations

import functools
import gc
import time
from pathlib import Path
from typing import Any

from conftest import ADMIN, Platform
from mito_lab import Client
from mito_lab.magics.dashboard import Dashboard
from mito_lab.testing import wait_until
from mito_lab.wire import TaskState


eventually = functools.partial(wait_until, timeout=60, interval=0.05)


def rows(board: Dashboard) -> dict[str, Any]:
    return {str(row.info.uuid): row for row in board.table.children}


def test_dashboard_buttons_filters_and_workers(platform: Platform, client: Client, tmp_path: Path) -> None:
    board = Dashboard(client)
    try:
        assert board.group.value == ADMIN[0] and board.table.children == ()
        platform.start_worker("-t", "cpu")
        eventually(lambda: "cpu" in board.workers_table.value, "the worker")
        talker = client.submit('for i in 1 2 3; do echo "line $i"; done; echo done > "$MITO_RESULT_DIR/r.txt"', labels=["talk"])
        sleeper = client.submit(["sleep", "600"], labels=["sleep"])
        eventually(lambda: rows(board).get(str(talker.uuid)) and rows(board)[str(talker.uuid)].info.result is not None, "the first task done")
        eventually(lambda: str(sleeper.uuid)[:8] in board.workers_table.value, "the worker's current task")
        assert board.state_buttons[TaskState.Finished].description == "Finished 1"
        assert board.state_buttons[TaskState.Running].description == "Running 1"

        rows(board)[str(talker.uuid)].logs_button.click()
        eventually(lambda: board.log_view.value == "line 1\nline 2\nline 3\n", "the task's output")
        rows(board)[str(talker.uuid)].download_button.click()
        result = tmp_path / "mito-results" / str(talker.uuid) / "result" / "r.txt"
        eventually(lambda: "unpacked" in board.status.value, "where the result went")
        assert result.read_text() == "done\n"

        sleeping_row = rows(board)[str(sleeper.uuid)]
        assert sleeping_row.download_button.disabled and not sleeping_row.cancel_button.disabled
        sleeping_row.cancel_button.click()
        eventually(lambda: board.state_buttons[TaskState.Cancelled].description == "Cancelled 1", "the cancelled task")
        assert sleeper.wait(timeout=30).state == TaskState.Cancelled
        eventually(lambda: "idle" in board.workers_table.value, "the worker idle again")

        board.state_buttons[TaskState.Cancelled].value = True  # filter: only Cancelled tasks
        eventually(lambda: list(rows(board)) == [str(sleeper.uuid)], "only the cancelled task")
        board.state_buttons[TaskState.Cancelled].value = False
        board.labels.value = "talk"
        eventually(lambda: list(rows(board)) == [str(talker.uuid)], "only the labelled task")
    finally:
        board.close()


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
        eventually(lambda: str(handle.uuid) in rows(board), "the task's row")
        time.sleep(0.5)  # a second read, had one started, would have ended by now
    finally:
        board.close()
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert problems == []
