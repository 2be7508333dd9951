"""A submitted task, as a notebook holds it: its state, a wait with a progress bar, its result
directory, its output, cancellation, ``await handle``, and a card that updates itself live."""

from __future__ import annotations

import asyncio
import threading
import uuid as uuid_module
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mito_lab.client.live import Bundle, LiveView
from mito_lab.client.progress import ShowProgress, open_bar, wanted
from mito_lab.client.views import task_bundle, task_html, task_text, updated_info
from mito_lab.wire import TaskExecState, TaskInfo, TaskState

if TYPE_CHECKING:
    from mito_lab.client.sync import Client

# the steps a wait's progress bar counts: queued, running, ended, outcome committed
_STEP = {TaskState.Pending: 0, TaskState.Ready: 0, TaskState.Running: 1, TaskState.Finished: 2, TaskState.Cancelled: 2}
_STEPS = 3
TICK_SECONDS = 1.0  # a displayed card's run time moves on this often while the task runs


def _step(info: TaskInfo) -> int:
    return _STEPS if info.result is not None else _STEP[info.state]


def _describe(info: TaskInfo) -> str:
    if info.result is not None:
        return f"{info.state.value} (exit {info.result.exit_status})"
    return info.state.value + (f" · {info.exec_state.value}" if info.exec_state else "")


class EndedTask(TaskInfo):
    """The final info of a task, as ``wait`` returns it: a ``TaskInfo`` that shows as the task's card."""

    def _repr_html_(self) -> str:
        return task_html(self)

    def __repr__(self) -> str:
        return f"<{task_text(self)}>"


def ended(info: TaskInfo) -> EndedTask:
    return EndedTask.model_construct(info.model_fields_set, **dict(info))


class TaskHandle:
    def __init__(self, client: "Client", task_uuid: uuid_module.UUID, info: TaskInfo | None = None) -> None:
        self.client = client
        self.uuid = task_uuid
        self._info = info
        self._view: LiveView | None = None
        self._stop_listening: Callable[[], None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()

    # --- reading --------------------------------------------------------------------------------

    def refresh(self) -> TaskInfo:
        """Read the task from the coordinator."""
        self._info = self.client.get_task(self.uuid).info
        return self._info

    @property
    def info(self) -> TaskInfo:
        """The task as last seen (read now if it never was)."""
        return self._info if self._info is not None else self.refresh()

    @property
    def state(self) -> TaskState:
        """The task's current state (read now)."""
        return self.refresh().state

    @property
    def exec_state(self) -> TaskExecState | None:
        return self.refresh().exec_state

    @property
    def done(self) -> bool:
        """Has the task ended, with its outcome committed?"""
        return self.refresh().result is not None

    @property
    def exit_status(self) -> int | None:
        result = self.refresh().result
        return None if result is None else result.exit_status

    # --- waiting and results --------------------------------------------------------------------

    def wait(self, timeout: float | None = None, progress: ShowProgress = None) -> EndedTask:
        """Block until the task has ended and its outcome is committed; returns its final info
        (shown as the task's card). Shows a progress bar (in a notebook or a terminal, or when
        ``progress=True``). A card of the task shown earlier shows the end by the time it returns."""
        bar = open_bar(_STEPS, "waiting", unit="step", steps_only=True) if wanted(progress) else None

        def changed(info: TaskInfo) -> None:
            self._info = info
            if bar is not None:
                bar.show(_step(info), _describe(info))

        try:
            final = ended(self.client.wait_task(self.uuid, timeout, changed))
        finally:
            if bar is not None:
                bar.close()
        self.client.run(self._settle(final))
        return final

    def __await__(self) -> Generator[Any, None, EndedTask]:
        """``await handle``: wait without blocking the notebook's own event loop."""
        future = self.client._thread.submit(self._wait_and_settle())
        final: EndedTask = yield from asyncio.wrap_future(future).__await__()
        return final

    async def _wait_and_settle(self) -> EndedTask:
        final = ended(await self.client.aio.wait_task(self.uuid))
        await self._settle(final)
        return final

    async def _settle(self, final: EndedTask) -> None:
        """On the client's loop: the task ended; a shown card shows it now."""
        self._show(final)

    def result(self, path: Path | str | None = None, progress: ShowProgress = None) -> Path:
        """Wait for the task, download its result artifact and unpack it; returns the ``result``
        directory (under ``path`` if given, else in the cache, where it is reused)."""
        return self.client.result(self.uuid, None if path is None else Path(path), progress)

    def logs(self, stream: str = "stdout", follow: bool = False) -> str | None:
        """The task's output (``stream`` is ``stdout`` or ``stderr``). With ``follow``, print it as
        it comes until the task ends (interrupt the cell to stop)."""
        if not follow:
            return self.client.output(self.uuid, stream)
        for piece in self.client.follow_logs(self.uuid, stream):
            print(piece, end="", flush=True)
        return None

    def cancel(self) -> None:
        """Cancel the task: it is taken off the queue, or, if running, its worker kills it."""
        self.client.cancel_task(self.uuid)

    # --- display --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        info = self._info
        return f"<TaskHandle {self.uuid} {info.state.value if info else '?'}>"

    def _bundle(self) -> Bundle:
        assert self._info is not None  # read before the card is first shown
        return task_bundle(self._info)

    def _ipython_display_(self) -> None:
        """The task's card, updated in place from the event stream whatever else the notebook
        does; its run time moves on while the task runs. Plain HTML: a saved notebook keeps the
        last state."""
        with self._lock:
            first = self._view is None
            if first:
                self.refresh()
                self._view = LiveView(self._bundle, self.client._thread.loop)
        assert self._view is not None and self._info is not None
        self._view.show()
        if first and self._info.result is None:
            self.client.run(self._follow())

    async def _follow(self) -> None:
        self._stop_listening = await self.client.aio.listen(self._on_event)
        await self._resync()  # catch up on what changed before the stream connected
        self._tick()

    def _on_event(self, event: dict[str, Any]) -> None:
        """On the client's loop thread: fold a task event into the card."""
        if event.get("kind") == "resync":
            asyncio.ensure_future(self._resync())
        elif event.get("kind") == "task" and event.get("uuid") == str(self.uuid) and self._info is not None:
            self._show(updated_info(self._info, event))

    async def _resync(self) -> None:
        self._show((await self.client.aio.get_task(self.uuid)).info)

    def _tick(self) -> None:
        """Re-render a running task's card every ``TICK_SECONDS`` (its run time grows) until it ends."""
        self._ticker = None
        if self._view is None or self._info is None or self._info.result is not None:
            return
        if self._info.state == TaskState.Running:
            self._view.changed()
        self._ticker = self.client._thread.loop.call_later(TICK_SECONDS, self._tick)

    def _show(self, info: TaskInfo) -> None:
        """On the client's loop: the task as it now is; a shown card follows (the end at once)."""
        self._info = info
        if self._view is None:
            return
        if info.result is None:
            self._view.changed()
            return
        self._view.publish()  # nothing more will change
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
