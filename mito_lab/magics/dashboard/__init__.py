"""``%mito dashboard``: a live panel of a group's tasks and workers, one widget however many tasks.

It is fed by the coordinator's event stream (no polling): every change arrives on the client's
background event loop, which merges it into compact rows (``store.py``). Changes are coalesced:
at most one update every ``FLUSH_SECONDS``, sent only when something changed, whatever the event
rate -- the rows that changed as one column-oriented message, the counts, progress and workers as
widget state, and now and then the whole table as state (so a page opened later starts from it).
The page (``dashboard.js``, an anywidget module shipped in the package) renders, sorts, searches
and draws; its actions (logs, cancel, result) come back as messages. Everything that touches the
dashboard's own state runs on the client's loop; what arrives from the page only hands work over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid as uuid_module
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import orjson
import traitlets as t

from mito_lab.client.http import MitoError
from mito_lab.client.views import FAILED_COLOR, STATE_COLORS, UNKNOWN_COLOR
from mito_lab.magics.dashboard.snapshot import PROGRESS_COLORS, progress_line, snapshot_html
from mito_lab.magics.dashboard.store import ACTIVE, TaskStore, row_of_info, rows_of_columns
from mito_lab.magics.live_output import display_live, snapshot_bundle, snapshot_id
from mito_lab.wire import (
    ArtifactContentType,
    ArtifactsFilterReq,
    ArtifactsListReq,
    TasksQueryReq,
    TaskState,
    WorkerInfo,
    WorkerQueryResp,
    WorkersQueryReq,
)

if TYPE_CHECKING:
    from mito_lab.client.sync import Client

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
FLUSH_SECONDS = 0.3  # the most often the page is updated; also how long reads of new tasks gather
MAX_ROWS = 50_000  # the newest tasks of the group the page holds; older ones are only counted
READ_SLACK = 200  # read this many more of the newest tasks than were heard of (their events follow)
RESULTS_PER_REQUEST = 1000
# The whole table (the state a page opened anew loads) is resent once this many rows changed since,
# or half the rows, and once tasks are quiet; in between, only the changed rows go to the page.
TABLE_MIN_CHANGED_ROWS = 2000
LOG_TAIL_CHARS = 50_000
NEWEST_IN_SNAPSHOT = 15
QUIET_SECONDS = 5.0  # once tasks stop changing for this long, the display's snapshot is brought up to date


class Dashboard(anywidget.AnyWidget):
    """Tasks and workers of one group, live. ``dashboard.close()`` stops it and leaves a static
    snapshot in its place. ``dashboard.tab = "timeline"`` (or tasks, durations, workers) turns the
    page to that tab."""

    _esm = HERE / "dashboard.js"
    _css = HERE / "dashboard.css"

    board_id = t.Unicode().tag(sync=True)  # where the page keeps the board's rows
    group = t.Unicode().tag(sync=True)
    groups = t.List(t.Unicode()).tag(sync=True)
    coordinator = t.Unicode().tag(sync=True)
    status = t.Unicode().tag(sync=True)
    live = t.Bool(False).tag(sync=True)
    tab = t.Enum(("tasks", "timeline", "durations", "workers"), "tasks").tag(sync=True)
    palette = t.Dict().tag(sync=True)
    summary = t.Dict().tag(sync=True)  # counts, progress, total, shown, rev, clock
    workers = t.List().tag(sync=True)
    # every row, resent now and then: {"rev": n, "columns": {...}} as JSON bytes (one binary frame,
    # which the widget machinery passes through without walking every value)
    table = t.Bytes(b"").tag(sync=True)
    task_log = t.Dict().tag(sync=True)  # the followed task: uuid, stream, text (its tail)

    def __init__(self, client: "Client", group: str | None = None) -> None:
        self.client = client
        groups = sorted(client.run(client.aio.my_groups()))
        group = group or client.username or ""
        if group not in groups:
            raise MitoError(403, f"you are not a member of group {group!r} (yours: {', '.join(groups)})")
        super().__init__(
            group=group, groups=groups, coordinator=client.coordinator,
            board_id=uuid_module.uuid4().hex,
            palette={"states": {state.value: color for state, color in STATE_COLORS.items()}, "order": [state.value for state in STATE_COLORS],
                     "failed": FAILED_COLOR, "unknown": UNKNOWN_COLOR, "progress": PROGRESS_COLORS},
            task_log={"uuid": "", "stream": "stdout", "text": ""},
        )
        self.store = TaskStore()
        self.rev = 0  # one per update of the page; the rows of a message older than the table are skipped
        self.known_workers: dict[uuid_module.UUID, WorkerInfo] = {}
        self._pending: dict[str, dict[str, Any]] = {}  # events of tasks not read yet, merged
        self._ignored: set[str] = set()  # tasks older than the rows: counted at the last reload only
        self._ended: set[str] = set()  # tasks whose result artifact is to be looked for
        self._buffered: list[dict[str, Any]] | None = None  # events during a reload
        self._background: set[asyncio.Future[Any]] = set()
        self._reader: asyncio.Future[Any] | None = None
        self._result_reader: asyncio.Future[Any] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._quiet_handle: asyncio.TimerHandle | None = None
        self._resend_table = True
        self._workers_dirty = True
        self._log_dirty = False
        self._log_text = ""
        self._follow: asyncio.Task[None] | None = None
        self._stop_listening: Any = None
        self._closed = False
        self._displayed = False
        self.on_msg(self._on_page_message)
        self.observe(lambda _: self._soon(self.reload()), names="group")
        client.run(self._start())

    # --- display --------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        """The panel after its static snapshot (``magics/live_output.py``), which is kept up to
        date: what a saved notebook shows where no kernel draws the panel."""
        display_live(self, self._snapshot_bundle(), self.board_id)
        self._displayed = True

    def _snapshot_bundle(self) -> dict[str, str]:
        return snapshot_bundle(self.snapshot_html(), repr(self))

    def __repr__(self) -> str:
        summary = self.summary or {}
        progress = progress_line(summary) if summary else "loading"
        return f"<mito dashboard of group {self.group}: {progress}>"

    def snapshot_html(self) -> str:
        """The panel's last state as static HTML."""
        return self._on_loop(self._snapshot_html)

    def _snapshot_html(self) -> str:
        return snapshot_html({
            "group": self.group, "coordinator": self.coordinator, "summary": self.store.summary(), "live": self.live,
            "newest": self.store.newest(NEWEST_IN_SNAPSHOT), "workers": self._worker_rows(), "log": self.task_log,
        })

    def _on_loop(self, work: Any) -> Any:
        """Call ``work`` on the client's loop (where the state changes), or here once it has stopped."""
        loop = self.client._thread.loop
        if loop.is_closed() or not loop.is_running() or threading.current_thread() is self.client._thread._thread:
            return work()

        async def call() -> Any:
            return work()

        return self.client.run(call())

    # --- running on the client's loop -----------------------------------------------------------

    def _soon(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the client's loop, reporting failures in the status line."""

        async def guarded() -> None:
            try:
                await coroutine
            except MitoError as exc:
                self.status = str(exc)

        self.client._thread.submit(guarded())

    async def _start(self) -> None:
        self._stop_listening = await self.client.aio.listen(self._on_event)
        await self.reload()

    def close(self) -> None:
        """Stop following the coordinator; a displayed panel is replaced by its static snapshot."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(RuntimeError):  # the client, and its loop, closed first
                self._on_loop(self._stop)
            if self._displayed:
                from IPython.display import update_display

                update_display(self._snapshot_bundle(), raw=True, display_id=snapshot_id(self.board_id))
                update_display({"text/plain": ""}, raw=True, display_id=self.board_id)
        finally:
            super().close()

    def _stop(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
        for handle in (self._follow, self._flush_handle, self._quiet_handle, self._reader, self._result_reader):
            if handle is not None:
                handle.cancel()
        self.live = False

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[Any]:
        """Run ``work`` beside the event stream: a failure is logged and shown, never left as an
        unretrieved task exception in the notebook."""
        running = asyncio.ensure_future(work)
        self._background.add(running)
        running.add_done_callback(self._settled)
        return running

    def _settled(self, done: asyncio.Future[Any]) -> None:
        self._background.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.warning("dashboard: %s", done.exception(), exc_info=done.exception())
            self.status = str(done.exception())

    # --- reading --------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Read the group's tasks and workers afresh (at start, on a group change, after a reconnection)."""
        group = self.group
        self._buffered = []
        try:
            table = await self.client.aio.task_columns(TasksQueryReq(group_name=group, limit=MAX_ROWS))
            with_result = {str(item.uuid) for item in (await self.client.aio.artifact_links(
                ArtifactsFilterReq(group_name=group, content_type=ArtifactContentType.result))).downloads}
            totals = await self._group_totals(group) if table.num_rows >= MAX_ROWS else {}
            workers = await self.client.aio.query_workers(WorkersQueryReq(group_name=group))
        finally:
            buffered, self._buffered = self._buffered, None
        if group != self.group:
            return  # another reload, for the group now chosen, follows
        self.store = TaskStore(rows_of_columns(table, with_result), totals)
        self._pending.clear()
        self._ignored.clear()
        self.known_workers = {worker.worker_id: worker for worker in workers.workers}
        for event in buffered:
            self._on_event(event)
        self._resend_table = self._workers_dirty = True
        self.live = True
        self.status = f"live · group {group} · {self.client.coordinator}"
        self._flush()

    async def _group_totals(self, group: str) -> dict[str, int]:
        """The group's tasks per state (asked only when it has more than the rows hold)."""
        totals = {}
        for state in STATE_COLORS:
            answer = await self.client.aio.query_tasks(TasksQueryReq(group_name=group, states=[state], count=True))
            totals[state.value] = answer.count
        return totals

    # --- events ---------------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        if self._buffered is not None and event.get("kind") in ("task", "worker"):
            self._buffered.append(event)
            return
        kind = event.get("kind")
        if kind == "task":
            self._task_event(event)
        elif kind == "worker":
            self._worker_event(event)
        elif kind == "resync":
            self._in_background(self.reload())
        elif kind == "closed":
            self.live = False
            self.status = f"not live: {event.get('msg', '')}"

    def _task_event(self, event: dict[str, Any]) -> None:
        task_uuid = event["uuid"]
        if self.store.apply_event(event):
            if event.get("archived"):
                self._look_for_result(task_uuid)
            self._schedule_flush()
        elif event.get("group") == self.group and task_uuid not in self._ignored:
            self._pending[task_uuid] = {**self._pending.get(task_uuid, {}), **event}
            if self._reader is None or self._reader.done():
                self._reader = self._in_background(self._read_new_tasks())
        self._track_worker_task(event)

    async def _read_new_tasks(self) -> None:
        """Read the tasks first heard of, together: the newest of the group, a page at a time
        (those are almost always the new ones), any other one by itself."""
        while self._pending:
            await asyncio.sleep(FLUSH_SECONDS)  # a burst of submissions is read at once
            wanted, group = set(self._pending), self.group
            offset, page = 0, len(wanted) + READ_SLACK
            while any(task_uuid not in self.store for task_uuid in wanted):
                table = await self.client.aio.task_columns(TasksQueryReq(group_name=group, limit=page, offset=offset))
                if group != self.group:
                    return  # the reload for the new group reads its tasks
                fresh = [row for row in rows_of_columns(table, set()) if row[0] not in self.store]
                for row in fresh:
                    self._add_row(row)
                if not fresh or table.num_rows < page:
                    break  # past the new tasks
                offset += page
            for task_uuid in [task_uuid for task_uuid in wanted if task_uuid not in self.store]:
                await self._read_old_task(task_uuid)
            self._schedule_flush()

    async def _read_old_task(self, task_uuid: str) -> None:
        """A task not among the newest changed: shown if the rows reach back to it."""
        try:
            answer = await self.client.aio.get_task(task_uuid)
        except MitoError:
            answer = None  # gone, or no longer visible to us
        horizon = self.store.horizon
        if answer is None or (horizon is not None and answer.info.task_id < horizon):
            self._ignored.add(task_uuid)  # older than the rows: counted among those beyond them
            self._pending.pop(task_uuid, None)
        elif task_uuid not in self.store:
            self._add_row(row_of_info(answer.info, any(a.content_type == ArtifactContentType.result for a in answer.artifacts)))

    def _add_row(self, row: list[Any]) -> None:
        """A task read: its row, brought up to date by the events that came before or during the read."""
        self.store.put(row)
        event = self._pending.pop(row[0], None)
        if event is not None:
            self.store.apply_event(event)
        if self.store.value(row[0], "state") not in ACTIVE and not self.store.value(row[0], "result"):
            self._look_for_result(row[0])

    def _look_for_result(self, task_uuid: str) -> None:
        self._ended.add(task_uuid)
        if self._result_reader is None or self._result_reader.done():
            self._result_reader = self._in_background(self._read_results())

    async def _read_results(self) -> None:
        """Which of the tasks that ended left a result artifact (the ``result`` action needs one)."""
        while self._ended:
            await asyncio.sleep(FLUSH_SECONDS)  # tasks ending together are asked about together
            batch = sorted(self._ended)[:RESULTS_PER_REQUEST]
            self._ended.difference_update(batch)
            answer = await self.client.aio.artifact_links(ArtifactsListReq(uuids=batch, content_type=ArtifactContentType.result))
            if self.store.mark_results(str(item.uuid) for item in answer.downloads):
                self._schedule_flush()

    def _track_worker_task(self, event: dict[str, Any]) -> None:
        """Keep the workers' current task right without asking: taken when Running, freed when archived."""
        if event.get("archived"):
            task_uuid = uuid_module.UUID(event["uuid"])
            holders = [info for info in self.known_workers.values() if info.assigned_task_id == task_uuid]
            for info in holders:
                self.known_workers[info.worker_id] = info.model_copy(update={"assigned_task_id": None})
        elif event.get("state") == TaskState.Running.value and event.get("worker"):
            worker = self.known_workers.get(uuid_module.UUID(event["worker"]))
            task_uuid = uuid_module.UUID(event["uuid"])
            holders = [worker] if worker is not None and worker.assigned_task_id != task_uuid else []
            for info in holders:
                self.known_workers[info.worker_id] = info.model_copy(update={"assigned_task_id": task_uuid})
        else:
            return
        if holders:
            self._workers_dirty = True
            self._schedule_flush()

    def _worker_event(self, event: dict[str, Any]) -> None:
        worker_uuid = uuid_module.UUID(event["worker_id"])
        if event.get("event") == "removed" or self.group not in event.get("groups", ()):
            if self.known_workers.pop(worker_uuid, None) is None:
                return
        elif event.get("event") == "heartbeat" and worker_uuid in self.known_workers:
            known = self.known_workers[worker_uuid]
            self.known_workers[worker_uuid] = WorkerInfo.model_validate({**known.model_dump(), "last_heartbeat": event["last_heartbeat"]})
        else:
            self._in_background(self._add_worker(worker_uuid))
            return
        self._workers_dirty = True
        self._schedule_flush()

    async def _add_worker(self, worker_uuid: uuid_module.UUID) -> None:
        try:
            answer: WorkerQueryResp = await self.client.aio.get_worker(worker_uuid)
        except MitoError:
            return  # gone again, or no longer visible to us
        if self.group in answer.groups:
            self.known_workers[worker_uuid] = answer.info
            self._workers_dirty = True
            self._schedule_flush()

    # --- updating the page ----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        """One update of the page with everything that changed since the last."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.rev += 1
        changed = self.store.take_changes()
        resend = self._resend_table or len(self.store.changed_since_table) >= max(TABLE_MIN_CHANGED_ROWS, len(self.store.rows) // 2)
        with self.hold_sync():
            if resend:
                self.table = orjson.dumps({"rev": self.rev, "columns": self.store.columns()})
                self.store.changed_since_table.clear()
                self._resend_table = False
            self.summary = {**self.store.summary(), "rev": self.rev, "clock": round(time.time(), 3)}
            if self._workers_dirty:
                self.workers = self._worker_rows()
                self._workers_dirty = False
            if self._log_dirty:
                self.task_log = {**self.task_log, "text": self._log_text}
                self._log_dirty = False
        if changed and not resend:
            self.send({"type": "rows", "rev": self.rev, "columns": self.store.columns(changed)})
        if changed and self._displayed:
            if self._quiet_handle is not None:
                self._quiet_handle.cancel()
            self._quiet_handle = asyncio.get_running_loop().call_later(QUIET_SECONDS, self._refresh_display)

    def _refresh_display(self) -> None:
        """Tasks are quiet: bring the snapshot beside the panel up to date (what a saved notebook
        shows where no kernel runs the panel), and the table state (what a page opened anew loads)."""
        from IPython.display import update_display

        self._quiet_handle = None
        update_display(self._snapshot_bundle(), raw=True, display_id=snapshot_id(self.board_id))
        if self.store.changed_since_table:
            self._resend_table = True
            self._schedule_flush()

    def _worker_rows(self) -> list[dict[str, Any]]:
        return [
            {"id": str(info.worker_id), "state": info.state.value, "tags": info.tags, "labels": info.labels,
             "heartbeat": round(info.last_heartbeat.timestamp(), 3), "task": str(info.assigned_task_id) if info.assigned_task_id else None}
            for info in sorted(self.known_workers.values(), key=lambda i: str(i.worker_id))
        ]

    # --- actions from the page ------------------------------------------------------------------

    def _on_page_message(self, _widget: Any, content: dict[str, Any], _buffers: list[Any]) -> None:
        action, task = content.get("action"), content.get("uuid")
        if action not in ("logs", "why", "cancel", "result") or not isinstance(task, str):
            self.status = f"the page asked for something unknown: {action!r}"
            return
        try:
            task_uuid = uuid_module.UUID(task)
        except ValueError:
            self.status = f"not a task uuid: {task!r}"
            return
        if action == "logs":
            self._soon(self.show_logs(task_uuid, content.get("stream", "stdout")))
        elif action == "why":
            self._soon(self.show_why(task_uuid))
        elif action == "cancel":
            self._soon(self.cancel(task_uuid))
        else:
            self._soon(self.download(task_uuid))

    async def cancel(self, task_uuid: uuid_module.UUID) -> None:
        await self.client.aio.cancel_task(task_uuid)
        self.status = f"cancelling {task_uuid}"

    async def download(self, task_uuid: uuid_module.UUID) -> None:
        self.status = f"downloading the result of {task_uuid}…"
        path = await self.client.aio.result(task_uuid, Path("mito-results") / str(task_uuid), progress=False)
        self.status = f"result of {task_uuid} unpacked in {path}"

    async def show_logs(self, task_uuid: uuid_module.UUID, stream: str = "stdout") -> None:
        """Show the task's output and keep following it until the task ends."""
        if stream not in ("stdout", "stderr"):
            raise MitoError(400, f"no such output stream: {stream!r} (stdout or stderr)")
        if self._follow is not None:
            self._follow.cancel()
        self._log_text = ""
        self.task_log = {"uuid": str(task_uuid), "stream": stream, "text": ""}
        self._follow = asyncio.ensure_future(self._follow_logs(task_uuid, stream))

    async def _follow_logs(self, task_uuid: uuid_module.UUID, stream: str) -> None:
        async for piece in self.client.aio.follow_logs(task_uuid, stream):
            self._log_text = (self._log_text + piece)[-LOG_TAIL_CHARS:]
            self._log_dirty = True
            self._schedule_flush()
        if not self._log_text:
            self._log_text = await self.client.aio.output(task_uuid, stream)
            self._log_dirty = True
            self._schedule_flush()

    async def show_why(self, task_uuid: uuid_module.UUID) -> None:
        """Show, where the log goes, why the task waits: the coordinator's own explanation."""
        if self._follow is not None:
            self._follow.cancel()
        explanation = await self.client.aio.explain(task_uuid)
        self._log_text = str(explanation)
        self.task_log = {"uuid": str(task_uuid), "stream": "why", "text": self._log_text}

    @property
    def log_text(self) -> str:
        """The followed task's output, as far as the page shows it."""
        return self.task_log.get("text", "")
