"""The notebook front end in real IPython kernels against a live platform: the magics return
DataFrames and handles, a handle's view follows its task, and the dashboard's widget models follow
tasks and workers from the event stream while no cell runs, and while other cells do."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager, start_new_kernel
from nbclient import NotebookClient

from conftest import ADMIN, Platform, adopt_env, login_env, start_platform
from test_sweeps import EXPERIMENT

Message = dict[str, Any]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Platform]:
    """A coordinator on SQLite (the notebook side is the same on every backend)."""
    running = start_platform(tmp_path / "platform")
    yield running
    running.stop()


class Kernel:
    """A real IPython kernel; we read every message it publishes, executing or not."""

    def __init__(self, platform: Platform) -> None:
        self.manager: KernelManager
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=platform.env(**login_env(platform)), cwd=str(platform.home))
        self.seen: list[Message] = []

    def execute(self, code: str) -> list[Message]:
        """Run a cell and return what it published; fail on an error."""
        msg_id = self.client.execute(code)
        mine: list[Message] = []
        while True:
            message = self.client.get_iopub_msg(timeout=120)
            self.seen.append(message)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            mine.append(message)
            if message["msg_type"] == "error":
                pytest.fail("\n".join(message["content"]["traceback"]))
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return mine

    def start(self, code: str) -> str:
        """Start a cell without waiting for it."""
        return self.client.execute(code)

    def wait_for(self, condition: Callable[[Message], bool], what: str, timeout: float = 60, since: int | None = None) -> Message:
        """Read published messages until one satisfies ``condition``; first among those already
        read from index ``since`` on, if given (updates of one change may come in any order)."""
        for message in self.seen[since:] if since is not None else ():
            if condition(message):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(message)
            if condition(message):
                return message
        pytest.fail(f"the kernel never published {what}")

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(live: Platform) -> Iterator[Kernel]:
    started = Kernel(live)
    yield started
    started.close()


def value_of(messages: list[Message]) -> str:
    """The text/plain result of a cell."""
    for message in messages:
        if message["msg_type"] == "execute_result":
            return message["content"]["data"]["text/plain"]
    raise AssertionError(f"no result in {[m['msg_type'] for m in messages]}")


def widget_update(text: str) -> Callable[[Message], bool]:
    """A widget model's state changed to something containing ``text``."""

    def check(message: Message) -> bool:
        if message["msg_type"] != "comm_msg":
            return False
        state = message["content"]["data"].get("state", {})
        return any(isinstance(v, str) and text in v for v in state.values())

    return check


def test_magics_return_dataframes_and_handles(live: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live.start_worker()
    cells = [
        "%load_ext mito_lab",
        "h = %mito submit -l demo -- echo hello\nh.wait(timeout=60).state.value",
        "tasks = %mito get tasks -l demo\n(type(tasks).__name__, str(tasks['state'].dtype), list(tasks['state']), str(tasks['created_at'].dt.tz))",
        "%%mito submit -l cell\necho 'from a cell' > \"$MITO_RESULT_DIR/out.txt\"\nexit 3",
        "cell = _\n(cell.wait(timeout=60).result.exit_status, (cell.result() / 'out.txt').read_text())",
        "%mito get logs {h.uuid}",
        "workers = %mito get workers\n(type(workers).__name__, list(workers['state']))",
        "%mito get tasks --count",
        "from IPython.core.error import UsageError\ntry:\n    %mito get nonsense\nexcept UsageError as exc:\n    print('usage error:', str(exc).splitlines()[-1])",
        "%mito get task 00000000-0000-0000-0000-000000000000",
        "%mito help submit",
        "%mito connect",
        f"%mito login {ADMIN[0]} {ADMIN[1]}\n%mito get groups",
        f"s = %mito sweep {EXPERIMENT} -p lr 0.01 -p seed 1,2 -n nb\ns.wait(timeout=120).results()[['seed', 'exit_status']].values.tolist()",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    adopt_env(live, monkeypatch, **login_env(live))
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    def out(index: int) -> str:
        texts = []  # what the cell printed and returned (progress bars go to display_data and stderr)
        for output in notebook.cells[index].outputs:
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type == "execute_result":
                texts.append(output.data["text/plain"])
        return "".join(texts)

    assert out(1) == "'Finished'"
    assert out(2) == "('DataFrame', 'category', ['Finished'], 'UTC')"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in notebook.cells[3].outputs)  # its live view
    assert out(4) == "(3, 'from a cell\\n')"
    assert out(5).strip() == "hello"
    assert out(6) == "('DataFrame', ['Normal'])"
    assert out(7) == "2"
    assert "usage error: %mito get: error: argument <COMMAND>: invalid choice: 'nonsense'" in out(8)
    assert "error: " in out(9) and "00000000-0000-0000-0000-000000000000" in out(9)
    assert "--labels" in out(10)
    assert out(11) == f"Connected to {live.url} as {ADMIN[0]}\n"
    assert out(13) == "[[1, 0], [2, 0]]"
    assert out(12).startswith(f"Logged in as {ADMIN[0]}\n") and "Admin" in out(12)


def test_a_handle_view_follows_its_task(live: Platform, kernel: Kernel) -> None:
    kernel.execute("%load_ext mito_lab")
    shown = kernel.execute("h = %mito submit -t later -- true\nh")
    view = next(m for m in shown if m["msg_type"] == "display_data")
    assert "application/vnd.jupyter.widget-view+json" in view["content"]["data"]
    opened = [m for m in kernel.seen if m["msg_type"] == "comm_open" and "Ready" in json.dumps(m["content"]["data"]["state"])]
    assert opened, "the view starts out showing the task Ready"
    live.start_worker("-t", "later")  # nothing runs in the kernel from here on
    kernel.wait_for(widget_update("Finished"), "the view showing the task Finished")


def test_the_dashboard_follows_tasks_and_workers_live(live: Platform, kernel: Kernel) -> None:
    kernel.execute("%load_ext mito_lab\nboard = %mito dashboard\nboard")
    live.start_worker("-t", "gpu")
    kernel.wait_for(widget_update("gpu"), "the new worker in the workers tab")

    submitted = len(kernel.seen)
    first = live.api("POST", "/tasks", {"task_spec": {"args": ["true"]}, "labels": ["idle-kernel"]}).json["uuid"]
    kernel.wait_for(widget_update(first[:8]), "a row for the new task", since=submitted)
    kernel.wait_for(widget_update(">Finished</span>"), "the task's badge Finished while the kernel is idle", since=submitted)
    kernel.wait_for(widget_update("Finished 1"), "the count of Finished tasks", since=submitted)

    busy = kernel.start("import time\ntime.sleep(20)")  # the kernel is busy with another cell...
    submitted = len(kernel.seen)
    second = live.api("POST", "/tasks", {"task_spec": {"args": ["sh", "-c", "echo working; sleep 1"]}}).json["uuid"]
    kernel.wait_for(widget_update(second[:8]), "a row for the second task", since=submitted)
    kernel.wait_for(widget_update("Finished 2"), "the second task counted Finished while another cell runs", since=submitted)
    still_busy = not any(m["parent_header"].get("msg_id") == busy and m["msg_type"] == "status"
                         and m["content"]["execution_state"] == "idle" for m in kernel.seen)
    assert still_busy, "the updates must have come while the sleeping cell ran"
