"""The notebook front end in real IPython kernels against a live platform: the magics return
DataFrames and handles, a handle's card follows its task (and a saved notebook keeps what it and a
sweep's bar showed last), and the dashboard's widget models follow tasks and workers from the event
stream while no cell runs, and while other cells do. In an in-process shell: ``Client()`` after
``%mito connect``, typo suggestions, cards and one-line errors."""

from __future__ import annotations

import json
import queue
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.manager import KernelManager, start_new_kernel
from nbclient import NotebookClient
from traitlets.config import Config

import mito_lab
from conftest import ADMIN, Platform, adopt_env, login_env, start_platform
from mito_lab.client.views import NO_MATHS, task_html
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
        f"s = %mito sweep {EXPERIMENT} -p lr 0.01 -p seed 1,2 -n nb\ndisplay(s.progress())\n"
        "s.wait(timeout=120).results()[['seed', 'exit_status']].values.tolist()",
        "try:\n    %mito sumbit -- true\nexcept UsageError as exc:\n    print('usage error:', str(exc).splitlines()[-1])",
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
    assert out(2) == "('ReadableFrame', 'category', ['Finished'], 'UTC')"
    assert out(4) == "(3, 'from a cell\\n')"
    assert out(5).strip() == "hello"
    assert out(6) == "('ReadableFrame', ['Normal'])"
    assert out(7) == "2"
    assert "usage error: %mito get: error: argument <COMMAND>: invalid choice: 'nonsense'" in out(8)
    assert "error: " in out(9) and "00000000-0000-0000-0000-000000000000" in out(9)
    assert "--labels" in out(10)
    assert out(11) == f"Connected to {live.url} as {ADMIN[0]}\n"
    assert out(13) == "[[1, 0], [2, 0]]"
    assert out(12).startswith(f"Logged in as {ADMIN[0]}\n") and "Admin" in out(12)
    assert "usage error: %mito: error: argument <COMMAND>: invalid choice: 'sumbit' (did you mean 'submit'?)" in out(14)

    # What a notebook saved now shows, kernel or not: the handle's card and the sweep's bar are
    # HTML that their updates kept at the final state (cells 4 and 13 waited for them), not widgets.
    def shown(index: int) -> str:
        views = [o.data for o in notebook.cells[index].outputs if o.output_type == "display_data" and "text/html" in o.data]
        assert len(views) == 1 and "application/vnd.jupyter.widget-view+json" not in views[0]
        return views[0]["text/html"]

    # the bars of waits and downloads were HTML redrawn in place and cleared once done: no output
    # is a widget that a notebook opened again could not draw ("model not found")
    assert not [o for cell in notebook.cells for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert [o.data for o in notebook.cells[1].outputs if o.output_type == "display_data"] == [{"text/plain": ""}]
    card = shown(3)
    assert ">Finished (3)</span>" in card and "run time" in card
    assert re.search(r'<pre style="white-space:pre-wrap[^>]*>[^<]*out\.txt&quot;\nexit 3', card)  # the cell's line breaks
    bar = shown(13)
    assert "<code" in bar and ">nb</code> · 2/2 ended · 2 succeeded · 0 failed" in bar


def test_a_handle_card_follows_its_task_and_its_run_time_ticks(live: Platform, kernel: Kernel) -> None:
    kernel.execute("%load_ext mito_lab")
    shown = kernel.execute("h = %mito submit -t later -- sleep 3\nh")
    card = next(m for m in shown if m["msg_type"] == "display_data")["content"]
    assert set(card["data"]) == {"text/plain", "text/html"}  # no widget: a saved notebook shows it as it was
    assert ">Ready</span>" in card["data"]["text/html"] and " · Ready · " in card["data"]["text/plain"]
    updates: list[str] = []

    def card_update(message: Message) -> bool:
        content = message["content"]
        if message["msg_type"] != "update_display_data" or content["transient"]["display_id"] != card["transient"]["display_id"]:
            return False
        updates.append(content["data"]["text/html"])
        return ">Finished</span>" in updates[-1]

    live.start_worker("-t", "later")  # nothing runs in the kernel from here on
    kernel.wait_for(card_update, "the card showing the task Finished")
    # while it runs in one state, its card is re-published with the run time moving on
    times_by_state: dict[str, set[str]] = {}
    for update in updates:
        if found := re.search(r">(Running[^<]*)</span>.*run time</th><td[^>]*>([^<]+)<", update, re.DOTALL):
            times_by_state.setdefault(found.group(1), set()).add(found.group(2))
    assert any(len(times) >= 2 for times in times_by_state.values()), f"the run time must tick while the task runs: {times_by_state}"


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """An in-process IPython shell with the extension loaded."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "mito_lab")
    yield ip
    ip.run_line_magic("unload_ext", "mito_lab")
    InteractiveShell.clear_instance()


def test_client_joins_the_connection_made_by_mito_connect(live: Platform, shell: InteractiveShell, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    adopt_env(live, monkeypatch)  # no MITO_* variables: on its own, Client() would try 127.0.0.1:5000
    monkeypatch.chdir(tmp_path)
    shell.run_line_magic("mito", f"connect {live.url} -u {ADMIN[0]} -p {ADMIN[1]}")
    with mito_lab.Client() as client:
        assert (client.coordinator, client.username, client.whoami()) == (live.url, ADMIN[0], ADMIN[0])


def test_typos_cards_and_errors_in_a_shell(live: Platform, shell: InteractiveShell, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for typo, meant in (("sumbit -- true", "submit"), ("conect", "connect"), ("dashbord", "dashboard"), ("get taks", "tasks")):
        with pytest.raises(UsageError, match=re.escape(f"(did you mean '{meant}'?)")):
            shell.run_line_magic("mito", typo)

    adopt_env(live, monkeypatch, **login_env(live))
    monkeypatch.chdir(tmp_path)
    live.start_worker()
    cell = shell.run_cell_magic("mito", "submit -l card", "echo one\necho 'two $HOME' > /dev/null")
    html = task_html(cell.wait(timeout=60))
    assert re.search(r'<pre style="white-space:pre-wrap[^>]*>bash -c &#x27;echo one\necho', html)  # the cell's line breaks
    assert f'class="mito-task {NO_MATHS}"' in html  # its $ stay dollars in JupyterLab

    shell.user_ns["cell"] = cell
    capsys.readouterr()
    shell.run_cell("cell.result()")  # nothing in $MITO_RESULT_DIR: fails at once, in one line
    assert capsys.readouterr().out.strip().splitlines() == [
        f"MitoError: task {cell.uuid} has no result artifact: it ended Finished with exit status 0 "
        "(a task's result is what it leaves in $MITO_RESULT_DIR)"]


def board_update(text: str) -> Callable[[Message], bool]:
    """The dashboard's state or rows, as the kernel sends them to the page, mention ``text``."""

    def check(message: Message) -> bool:
        return message["msg_type"] == "comm_msg" and text in json.dumps(message["content"]["data"])

    return check


def test_the_dashboard_follows_tasks_and_workers_live(live: Platform, kernel: Kernel) -> None:
    shown = kernel.execute("%load_ext mito_lab\nboard = %mito dashboard\nboard")
    snapshot, view = (m["content"] for m in shown if m["msg_type"] == "display_data")
    # the static snapshot first (a saved notebook shows it where no kernel draws the panel), then the panel
    assert "mito dashboard" in snapshot["data"]["text/html"] and "application/vnd.jupyter.widget-view+json" in view["data"]
    assert snapshot["transient"]["display_id"] == f'{view["transient"]["display_id"]}-snapshot'
    live.start_worker("-t", "gpu")
    kernel.wait_for(board_update('"gpu"'), "the new worker in the workers tab")

    submitted = len(kernel.seen)
    first = live.api("POST", "/tasks", {"task_spec": {"args": ["true"]}, "labels": ["idle-kernel"]}).json["uuid"]
    kernel.wait_for(board_update(first), "a row for the new task", since=submitted)
    kernel.wait_for(board_update('"Finished": 1'), "the task counted Finished while the kernel is idle", since=submitted)
    kernel.wait_for(lambda m: m["msg_type"] == "update_display_data" and "Finished 1" in m["content"]["data"]["text/html"],
                    "the display's snapshot brought up to date once the task ended", since=submitted)

    busy = kernel.start("import time\ntime.sleep(20)")  # the kernel is busy with another cell...
    submitted = len(kernel.seen)
    second = live.api("POST", "/tasks", {"task_spec": {"args": ["sh", "-c", "echo working; sleep 1"]}}).json["uuid"]
    kernel.wait_for(board_update(second), "a row for the second task", since=submitted)
    kernel.wait_for(board_update('"Finished": 2'), "the second task counted Finished while another cell runs", since=submitted)
    still_busy = not any(m["parent_header"].get("msg_id") == busy and m["msg_type"] == "status"
                         and m["content"]["execution_state"] == "idle" for m in kernel.seen)
    assert still_busy, "the updates must have come while the sleeping cell ran"
