"""``%mito dashboard``: a live ipywidgets panel of a group's tasks and workers.

It is fed by the coordinator's event stream (no polling): every change arrives on the client's
background event loop, which updates the widgets, so the panel stays live while the notebook runs
other cells. Everything that touches the dashboard's own state runs on that loop; widget callbacks
(clicks, filter changes) only hand work over to it."""

from __future__ import annotations

import asyncio
import html
import logging
import shlex
import uuid as uuid_module
from collections.abc import Coroutine
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from mito_lab.client.http import MitoError
from mito_lab.client.views import STATE_COLORS, duration_text, failed, state_badge, updated_info
from mito_lab.wire import TaskInfo, TasksQueryReq, TaskState, WorkerInfo, WorkerQueryResp, WorkersQueryReq

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mito_lab.client.sync import Client

TRACKED_TASKS = 500  # tasks loaded at start and counted; newer ones are added as they come
SHOWN_TASKS = 50  # rows in the table
AGE_REFRESH_SECONDS = 5.0  # heartbeat ages are re-rendered locally (no request) this often


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


class TaskRow(w.HBox):
    """One task: state, identity, command, outcome, and its buttons."""

    def __init__(self, dashboard: "Dashboard", info: TaskInfo) -> None:
        self.dashboard = dashboard
        self.badge = w.HTML(layout=w.Layout(width="220px"))
        self.name = w.HTML(layout=w.Layout(width="110px"))
        self.command = w.HTML(layout=w.Layout(width="260px"))
        self.details = w.HTML(layout=w.Layout(width="180px"))
        self.logs_button = w.Button(description="logs", tooltip="show its output below", layout=w.Layout(width="60px"))
        self.cancel_button = w.Button(description="cancel", button_style="warning", layout=w.Layout(width="70px"))
        self.download_button = w.Button(description="result", tooltip="download and unpack its result", icon="download", layout=w.Layout(width="90px"))
        self.logs_button.on_click(lambda _: dashboard.soon(dashboard.show_logs(self.info.uuid)))
        self.cancel_button.on_click(lambda _: dashboard.soon(dashboard.cancel(self.info.uuid)))
        self.download_button.on_click(lambda _: dashboard.soon(dashboard.download(self.info.uuid)))
        super().__init__([self.badge, self.name, self.command, self.details, self.logs_button, self.cancel_button, self.download_button])
        self.show(info)

    def show(self, info: TaskInfo) -> None:
        self.info = info
        self.badge.value = state_badge(info)
        self.name.value = f'<code title="{info.uuid}">{str(info.uuid)[:8]}</code> #{info.task_id}'
        self.command.value = f'<code>{html.escape(shlex.join(info.spec.args))[:60]}</code>'
        self.details.value = html.escape(" ".join(filter(None, [", ".join(info.labels), duration_text(info)])))
        self.cancel_button.disabled = info.result is not None or info.cancel_requested
        self.download_button.disabled = info.result is None or info.state != TaskState.Finished


class Dashboard(w.VBox):
    """Tasks and workers of one group, live. ``dashboard.close()`` stops it."""

    def __init__(self, client: "Client", group: str | None = None) -> None:
        self.client = client
        self.tasks: dict[uuid_module.UUID, TaskInfo] = {}
        self.rows: dict[uuid_module.UUID, TaskRow] = {}
        self.workers: dict[uuid_module.UUID, WorkerInfo] = {}
        self._reading: dict[str, bool] = {}  # tasks being read -> did an event come meanwhile?
        self._background: set[asyncio.Future[Any]] = set()  # reads the events started, held until done
        self._follow: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._stop_listening: Any = None
        self._log_task: uuid_module.UUID | None = None

        groups = sorted(client.my_groups())
        group = group or client.username
        if group not in groups:
            raise MitoError(403, f"you are not a member of group {group!r} (yours: {', '.join(groups)})")
        self.group = w.Dropdown(options=groups, value=group, description="group")
        self.labels = w.Text(placeholder="label, label", description="labels", continuous_update=False)
        self.state_buttons = {
            state: w.ToggleButton(value=False, description=state.value, tooltip=f"show only {state.value} tasks",
                                  style={"text_color": STATE_COLORS[state], "font_weight": "bold"}, layout=w.Layout(width="120px"))
            for state in STATE_COLORS
        }
        self.status = w.HTML()
        self.table = w.VBox()
        self.table.add_class("mito-tasks")  # the rows, apart from the filter buttons (named after states too)
        self.log_title = w.HTML("<i>click <b>logs</b> on a task to follow its output here</i>")
        self.log_stream = w.ToggleButtons(options=["stdout", "stderr"], value="stdout", style={"button_width": "70px"})
        self.log_view = w.Textarea(layout=w.Layout(width="100%", height="180px"), disabled=True)
        self.workers_table = w.HTML()
        for control in (self.group, self.labels, *self.state_buttons.values()):
            control.observe(lambda _: self.soon(self.reload()), names="value")
        self.log_stream.observe(lambda _: self.soon(self.show_logs(self._log_task)), names="value")

        tasks_tab = w.VBox([
            w.HBox([self.group, self.labels]),
            w.HBox(list(self.state_buttons.values())),
            self.table,
            w.HBox([self.log_title, self.log_stream]),
            self.log_view,
        ])
        tabs = w.Tab(children=[tasks_tab, w.VBox([self.workers_table])], titles=("Tasks", "Workers"))
        super().__init__([tabs, self.status])
        client.run(self._start())

    # --- running on the client's loop -----------------------------------------------------------

    def soon(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the client's loop, reporting failures in the status line."""

        async def guarded() -> None:
            try:
                await coroutine
            except MitoError as exc:
                self.status.value = f'<span style="color:{STATE_COLORS[TaskState.Cancelled]}">{html.escape(str(exc))}</span>'

        self.client._thread.submit(guarded())

    async def _start(self) -> None:
        self._stop_listening = await self.client.aio.listen(self._on_event)
        await self.reload()
        self._tick()

    def close(self) -> None:
        """Stop following the coordinator (the widgets stay as they were)."""

        def stop() -> None:
            if self._stop_listening is not None:
                self._stop_listening()
            for handle in (self._follow, self._ticker):
                if handle is not None:
                    handle.cancel()

        self.client._thread.call_soon(stop)

    def _tick(self) -> None:
        self._render_workers()
        for row in list(self.rows.values())[:SHOWN_TASKS]:
            if row.info.state == TaskState.Running:
                row.show(row.info)  # its run time grows
        self._ticker = asyncio.get_running_loop().call_later(AGE_REFRESH_SECONDS, self._tick)

    # --- reading --------------------------------------------------------------------------------

    def _filters(self) -> tuple[list[str], list[str]]:
        labels = [part.strip() for part in self.labels.value.split(",") if part.strip()]
        states = [state.value for state, button in self.state_buttons.items() if button.value]
        return labels, states

    def _matches(self, info: TaskInfo) -> bool:
        labels, states = self._filters()
        return info.group_name == self.group.value and set(labels) <= set(info.labels) and (not states or info.state.value in states)

    async def reload(self) -> None:
        """Read the tasks and workers afresh (at start, on a filter change, after a reconnection)."""
        labels, states = self._filters()
        found = await self.client.aio.query_tasks(
            TasksQueryReq(group_name=self.group.value, labels=labels or None, states=states or None, limit=TRACKED_TASKS)
        )
        self.tasks = {task.uuid: task for task in found.tasks}
        self._render_tasks()
        workers = await self.client.aio.query_workers(WorkersQueryReq(group_name=self.group.value))
        self.workers = {worker.worker_id: worker for worker in workers.workers}
        self._render_workers()
        self.status.value = f"<small>live · group {html.escape(self.group.value)} · {self.client.coordinator}</small>"

    def _render_tasks(self) -> None:
        shown = sorted(self.tasks.values(), key=lambda t: t.task_id, reverse=True)[:SHOWN_TASKS]
        rows = []
        for info in shown:
            row = self.rows.get(info.uuid)
            if row is None:
                row = self.rows[info.uuid] = TaskRow(self, info)
            elif row.info is not info:
                row.show(info)
            rows.append(row)
        for gone in set(self.rows) - {info.uuid for info in shown}:
            self.rows.pop(gone).close()
        self.table.children = rows
        self._render_counts()

    def _render_counts(self) -> None:
        counts = dict.fromkeys(STATE_COLORS, 0)
        for info in self.tasks.values():
            counts[info.state] = counts.get(info.state, 0) + 1
        for state, button in self.state_buttons.items():
            button.description = f"{state.value} {counts[state]}"
        failures = sum(1 for info in self.tasks.values() if failed(info))
        self.state_buttons[TaskState.Finished].tooltip = f"{failures} of the listed tasks failed" if failures else "show only Finished tasks"

    def _render_workers(self) -> None:
        if not self.workers:
            self.workers_table.value = f"<i>no workers serve group {html.escape(self.group.value)}</i>"
            return
        head = "".join(f'<th style="text-align:left;padding-right:1em">{name}</th>' for name in ("worker", "state", "tags", "labels", "heartbeat", "task"))
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left;padding-right:1em">{cell}</td>' for cell in (
                f'<code title="{info.worker_id}">{str(info.worker_id)[:8]}</code>',
                html.escape(info.state.value),
                html.escape(", ".join(info.tags)),
                html.escape(", ".join(info.labels)),
                _age(info.last_heartbeat),
                f"<code>{str(info.assigned_task_id)[:8]}</code>" if info.assigned_task_id else "<i>idle</i>",
            )) + "</tr>"
            for info in sorted(self.workers.values(), key=lambda i: str(i.worker_id))
        )
        self.workers_table.value = f"<table><tr>{head}</tr>{body}</table>"

    # --- events ---------------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "task":
            self._task_event(event)
        elif kind == "worker":
            self._worker_event(event)
        elif kind == "resync":
            self._in_background(self.reload())
        elif kind == "closed":
            self.status.value = f"<small>not live: {html.escape(event.get('msg', ''))}</small>"

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the event stream: a failure is logged and shown, never left as an
        unretrieved task exception in the notebook."""
        running = asyncio.ensure_future(work)
        self._background.add(running)
        running.add_done_callback(self._settled)

    def _settled(self, done: asyncio.Future[Any]) -> None:
        self._background.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.warning("dashboard: %s", done.exception(), exc_info=done.exception())
            self.status.value = f"<small>{html.escape(str(done.exception()))}</small>"

    def _task_event(self, event: dict[str, Any]) -> None:
        task_uuid = uuid_module.UUID(event["uuid"])
        known = self.tasks.get(task_uuid)
        if known is not None:
            info = updated_info(known, event)
            if self._matches(info):
                self.tasks[task_uuid] = info
            else:
                del self.tasks[task_uuid]
            self._render_tasks()
        elif event["uuid"] in self._reading:
            self._reading[event["uuid"]] = True  # what is being read may already be stale
        elif event.get("group") == self.group.value:
            self._reading[event["uuid"]] = False  # from now: later events of it mark the read stale, none reads it again
            self._in_background(self._add_task(task_uuid))
        self._track_worker_task(event, task_uuid)

    def _track_worker_task(self, event: dict[str, Any], task_uuid: uuid_module.UUID) -> None:
        """Keep the workers' current task right without asking: taken when Running, freed when archived."""
        worker = event.get("worker")
        if worker and event.get("state") == TaskState.Running.value and uuid_module.UUID(worker) in self.workers:
            info = self.workers[uuid_module.UUID(worker)]
            self.workers[info.worker_id] = info.model_copy(update={"assigned_task_id": task_uuid})
        elif event.get("archived"):
            for info in self.workers.values():
                if info.assigned_task_id == task_uuid:
                    self.workers[info.worker_id] = info.model_copy(update={"assigned_task_id": None})
        else:
            return
        self._render_workers()

    async def _add_task(self, task_uuid: uuid_module.UUID) -> None:
        """A task first heard of: read it, again if it changed while it was being read."""
        key = str(task_uuid)
        try:
            while True:
                self._reading[key] = False
                info = (await self.client.aio.get_task(task_uuid)).info
                if not self._reading.get(key):
                    break
        finally:
            self._reading.pop(key, None)
        if self._matches(info):
            self.tasks[task_uuid] = info
            self._render_tasks()

    def _worker_event(self, event: dict[str, Any]) -> None:
        worker_uuid = uuid_module.UUID(event["worker_id"])
        if event.get("event") == "removed" or self.group.value not in event.get("groups", ()):
            if self.workers.pop(worker_uuid, None) is not None:
                self._render_workers()
        elif event.get("event") == "heartbeat" and worker_uuid in self.workers:
            self.workers[worker_uuid] = WorkerInfo.model_validate({**self.workers[worker_uuid].model_dump(), "last_heartbeat": event["last_heartbeat"]})
            self._render_workers()
        else:
            self._in_background(self._add_worker(worker_uuid))

    async def _add_worker(self, worker_uuid: uuid_module.UUID) -> None:
        try:
            answer: WorkerQueryResp = await self.client.aio.get_worker(worker_uuid)
        except MitoError:
            return  # gone again, or no longer visible to us
        if self.group.value in answer.groups:
            self.workers[worker_uuid] = answer.info
            self._render_workers()

    # --- actions --------------------------------------------------------------------------------

    async def cancel(self, task_uuid: uuid_module.UUID) -> None:
        await self.client.aio.cancel_task(task_uuid)
        self.status.value = f"<small>cancelling {task_uuid}</small>"

    async def download(self, task_uuid: uuid_module.UUID) -> None:
        self.status.value = f"<small>downloading the result of {task_uuid}…</small>"
        path = await self.client.aio.result(task_uuid, Path("mito-results") / str(task_uuid), progress=False)
        self.status.value = f"<small>result of {task_uuid} unpacked in <code>{html.escape(str(path))}</code></small>"

    async def show_logs(self, task_uuid: uuid_module.UUID | None) -> None:
        """Show the task's output and keep following it until the task ends."""
        if task_uuid is None:
            return
        if self._follow is not None:
            self._follow.cancel()
        self._log_task = task_uuid
        stream = self.log_stream.value
        self.log_title.value = f"<b>{stream}</b> of <code>{task_uuid}</code>"
        self.log_view.value = ""
        self._follow = asyncio.ensure_future(self._follow_logs(task_uuid, stream))

    async def _follow_logs(self, task_uuid: uuid_module.UUID, stream: str) -> None:
        text = ""
        async for piece in self.client.aio.follow_logs(task_uuid, stream):
            text += piece
            self.log_view.value = text[-200_000:]  # a text box is not a log store: keep the tail
        if not text:
            self.log_view.value = await self.client.aio.output(task_uuid, stream)

