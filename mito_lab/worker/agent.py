"""The worker: registers, heartbeats on its own timer, takes tasks and runs up to ``slots`` of them
at once (reference 4.12, with SPEC's improvements: long-poll dispatch, retries with backoff instead
of exiting on a coordinator hiccup, process-group kills, outputs streamed to files).

With a coordinator that has protocol v2 (``POST /workers/exchange``), outcomes and exec states
wait in an outbox that the next exchange carries, and that exchange also takes the next tasks: a
worker busy with short tasks sends one request per batch of them, and holds a few taken tasks so
that its slots never wait for the network. With an older coordinator it speaks the reference's
protocol, one task at a time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import shutil
import shlex
import signal
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import jwt
from pydantic import BaseModel, ValidationError

from mito_lab.client.api import login_token
from mito_lab.client.credentials import Credentials
from mito_lab.client.http import HttpSession, MitoError
from mito_lab.config import WorkerConfig, cache_dir, format_duration
from mito_lab.logs import setup_logging
from mito_lab.wire import (
    HEARTBEATS_PER_TIMEOUT,
    LIVE_LOG_CHUNK,
    MAX_EXCHANGE_TASKS,
    MAX_WAIT_SECONDS,
    ArtifactContentType,
    ArtifactSource,
    CommitOp,
    DownloadResp,
    ExchangeOp,
    ExchangeReq,
    ExchangeResp,
    ExecStateOp,
    ExecStatesOp,
    LogChunk,
    LogOp,
    RegisterWorkerReq,
    RegisterWorkerResp,
    ReportTaskReq,
    ReportTaskResp,
    SubmitOp,
    SubmitTaskReq,
    TaskExecState,
    TaskReport,
    TaskResultMessage,
    TaskResultSpec,
    TaskUsage,
    UploadArtifactReq,
    UploadOp,
    WatchResp,
    WorkerSignal,
    WorkerTaskResp,
)
from mito_lab.worker import gpu, identity, packing, runner
from mito_lab.worker.containment import TASK_ENVIRONMENT_MARK, Containment, UnsafeFile, read_regular_file
from mito_lab.worker.gpu import GpuPeak
from mito_lab.worker.workspace import STREAMS, FolderPool, Slot, TaskFolders, TaskOutput

log = logging.getLogger("mito_lab.worker")
T = TypeVar("T")
MAX_BACKOFF_SECONDS = 30.0
PREPARE_SECONDS = 30 * 60  # resources plus watch, as the reference
RETIRE_MARGIN_SECONDS = 30.0
WATCH_POLL_SECONDS = 60.0
LOG_SHIP_SECONDS = 0.5
UPLOAD_URL_ATTEMPTS = 3
UPLOAD_SECONDS = 600  # packing and uploading a task's outputs, as the reference
MAX_NEW_TASK_BYTES = 1 << 20  # the most of $MITO_NEW_TASK the worker reads
PREFETCH_PER_SLOT = 32  # tasks taken ahead per slot while tasks are short
MAX_EXCHANGE_LOG_OPS = 16  # chunks of live output per exchange: at most 16 x 64 KiB of output
SHORT_TASK_SECONDS = 1.0  # a task that runs longer stops the prefetch
HOLD_SECONDS = 2.0  # a task taken ahead and stuck behind long tasks this long is handed back
LINGER_SECONDS = 0.005  # reports wait this long for more to go with them...
LINGER_BUSY_SECONDS = 0.05  # ...or this long while the worker works through tasks it took ahead
# Requests under way at once: the two long polls (tasks, heartbeat), the reports beside them and a
# cancelled poll still waiting for its answer; then per running task a watch long poll and its live
# output. The session runs this many at once, so that no long poll holds a report back.
REQUESTS_BESIDE_TASKS = 8
REQUESTS_PER_SLOT = 2
# Variables of the worker's own configuration that a task must not inherit.
PRIVATE_ENVIRONMENT = ("MITO_PASSWORD", "MITO_USER")


class Evicted(Exception):
    """The coordinator rejected this worker's token: it was removed, shut down or expired."""


class TaskGone(Exception):
    """The coordinator no longer has this task assigned to us (re-queued or cancelled)."""


class UploadFailed(Exception):
    """An output of the task could not be stored, even with new upload URLs."""


class WorkerClient:
    """The worker protocol. Connection errors and 5xx are retried with capped exponential backoff;
    401 means eviction; 404 on a report means the task is no longer ours."""

    def __init__(self, session: HttpSession, stopping: asyncio.Event) -> None:
        self.session = session
        self.stopping = stopping

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str, longest: float = MAX_BACKOFF_SECONDS) -> T:
        """``attempt`` until it succeeds, waiting 1 s, 2 s, 4 s... at most ``longest`` between tries."""
        delay = 1.0
        while True:
            try:
                return await attempt()
            except MitoError as exc:
                if exc.status == 401:
                    raise Evicted(exc.msg) from None
                if exc.status and exc.status < 500:
                    raise
                log.warning("%s failed (%s); retrying in %.0fs", what, exc, delay)
            if self.stopping.is_set():
                raise asyncio.CancelledError()
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def call(
        self, method: str, path: str, body: BaseModel | None = None, response: type[Any] | None = None,
        longest: float = MAX_BACKOFF_SECONDS, **options: Any,
    ) -> Any:
        return await self._retrying(lambda: self.session.call(method, path, body, response, **options), f"{method} /{path}", longest)

    async def heartbeat(self, interval: float, wait: float = 0) -> WorkerSignal | None:
        """A heartbeat; with ``wait`` it is held open until a cancellation comes or ``wait`` passes.
        Retried at least every ``interval`` (or second): a coordinator back from a restart hears from
        the worker within about an interval, long before it gives up on it (a few intervals)."""
        return await self.call("POST", "workers/heartbeat", None, WorkerSignal, longest=max(interval, 1.0), wait=wait)

    async def watch(self, target: uuid_module.UUID, state: TaskExecState, wait: float) -> WatchResp:
        return await self.call("GET", f"workers/tasks/{target}/reaches/{state.value}", None, WatchResp, wait=wait)

    async def exchange(self, reports: list[TaskReport], want: int, wait: float, holding: Callable[[], list[int]]) -> ExchangeResp:
        """Protocol v2. A retry after a failure also says which tasks the worker holds: the tasks
        an answer lost on the way took are handed over again."""
        attempts = 0

        def send() -> Awaitable[ExchangeResp]:
            nonlocal attempts
            attempts += 1
            request = ExchangeReq(reports=reports, want=want, holding=holding() if attempts > 1 else None)
            return self.session.call("POST", "workers/exchange", request, ExchangeResp, wait=wait)

        return await self._retrying(send, "exchange")

    async def fetch(self, wait: float) -> WorkerTaskResp | None:
        return await self.call("GET", "workers/tasks", None, WorkerTaskResp, wait=wait)

    async def report(self, task: WorkerTaskResp, op: Any) -> ReportTaskResp:
        try:
            return await self.call("POST", "workers/tasks", ReportTaskReq(id=task.id, op=op), ReportTaskResp)
        except MitoError as exc:
            if exc.status == 404:
                raise TaskGone(exc.msg) from None
            raise

    async def resource_url(self, task: WorkerTaskResp, source: Any) -> DownloadResp:
        if isinstance(source, ArtifactSource):
            ref = source.Artifact
            return await self.call("GET", f"workers/tasks/{ref.uuid}/artifacts/{ref.content_type.value}", None, DownloadResp)
        return await self.call("GET", f"workers/tasks/{task.uuid}/attachments/{quote(source.Attachment.key)}", None, DownloadResp)

    async def transfer(self, upload: bool, url: str, path: Path) -> None:
        if upload:
            await self._retrying(lambda: self.session.upload_file(url, path), "upload")
        else:
            await self._retrying(lambda: self.session.download_file(url, path), "download")

    async def unregister(self) -> None:
        with contextlib.suppress(MitoError):
            await self.session.call("DELETE", "workers", timeout=3)


class ReferenceReports:
    """Progress through the reference's protocol: exec states sent in order off the task's
    critical path (the ones reached while a report is on its way go together), outcomes and
    commits one request each."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self._states: asyncio.Queue[tuple[WorkerTaskResp, TaskExecState]] = asyncio.Queue()

    def state(self, task: WorkerTaskResp, state: TaskExecState) -> None:
        self._states.put_nowait((task, state))

    async def outcome(self, task: WorkerTaskResp, op: Literal["Finish", "Cancel"]) -> None:
        await self.client.report(task, op)

    async def commit(self, task: WorkerTaskResp, result: TaskResultSpec) -> None:
        await self.settle(task)  # every exec state is recorded before the commit
        await self.client.report(task, CommitOp(Commit=result))

    async def log(self, task: WorkerTaskResp, chunk: LogChunk, last: bool) -> None:
        await self.client.report(task, LogOp(Log=chunk))

    async def settle(self, task: WorkerTaskResp) -> None:
        await self._states.join()

    async def run(self) -> None:
        while True:
            reached = [await self._states.get()]
            while not self._states.empty():
                reached.append(self._states.get_nowait())
            for task, run in itertools.groupby(reached, key=lambda item: item[0]):
                states = [state for _, state in run]
                op = ExecStatesOp(ExecStates=states) if len(states) > 1 else ExecStateOp(ExecState=states[0])
                try:
                    await self.client.report(task, op)
                except (TaskGone, MitoError) as exc:
                    log.debug("task %s: exec states %s not recorded: %s", task.uuid, [s.value for s in states], exc)
            for _ in reached:
                self._states.task_done()


class BatchedReports:
    """Progress through protocol v2: every op waits in an outbox that the next exchange empties,
    so a busy worker's reports batch themselves (one request carries what happened meanwhile).
    Live output goes the same way where the coordinator takes it (``logs_in_exchange``)."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.logs_in_exchange = False  # set from the registration's answer
        self._outbox: dict[int, list[ExchangeOp]] = {}
        self._settling: dict[int, asyncio.Future[None]] = {}
        self.waiting = asyncio.Event()  # the outbox has something

    def _add(self, task: WorkerTaskResp, op: ExchangeOp) -> None:
        self._outbox.setdefault(task.id, []).append(op)
        self.waiting.set()

    def state(self, task: WorkerTaskResp, state: TaskExecState) -> None:
        """Consecutive states of a task go as one ``ExecStates`` op."""
        ops = self._outbox.get(task.id)
        if ops and isinstance(ops[-1], ExecStatesOp):
            ops[-1].ExecStates.append(state)
            self.waiting.set()
        else:
            self._add(task, ExecStatesOp(ExecStates=[state]))

    async def outcome(self, task: WorkerTaskResp, op: Literal["Finish", "Cancel"]) -> None:
        self._add(task, op)

    async def commit(self, task: WorkerTaskResp, result: TaskResultSpec) -> None:
        self._add(task, CommitOp(Commit=result))

    async def log(self, task: WorkerTaskResp, chunk: LogChunk, last: bool) -> None:
        """A chunk of live output. While the task runs, the next chunk is read only once the
        coordinator has this one (backpressure); a task's last chunks go ahead of its outcome."""
        if not self.logs_in_exchange:  # an earlier coordinator of protocol v2: the report route
            await self.client.report(task, LogOp(Log=chunk))
            return
        self._add(task, LogOp(Log=chunk))
        if not last:
            await self.settle(task)

    def release(self, task: WorkerTaskResp) -> None:
        self._add(task, "Release")

    def withdraw_release(self, task_id: int) -> None:
        """Take back a release not sent yet."""
        if self._outbox.get(task_id) == ["Release"]:
            del self._outbox[task_id]
            if not self._outbox:
                self.waiting.clear()

    async def settle(self, task: WorkerTaskResp) -> None:
        """Wait until the coordinator has recorded everything reported on ``task`` so far (e.g. its
        outcome, before the task submits its downstream task)."""
        if task.id in self._outbox or task.id in self._settling:
            await asyncio.shield(self._settling.setdefault(task.id, asyncio.get_running_loop().create_future()))

    def take(self) -> list[TaskReport]:
        """The reports for the next exchange: everything waiting, but at most MAX_EXCHANGE_LOG_OPS
        chunks of live output (a task's ops after the last chunk that fits wait for the next one,
        in order), so that an exchange stays well within the coordinator's bound on a request."""
        reports, chunks = [], 0
        for task_id, ops in list(self._outbox.items()):
            fitting = len(ops)
            for index, op in enumerate(ops):
                if isinstance(op, LogOp):
                    if chunks == MAX_EXCHANGE_LOG_OPS:
                        fitting = index
                        break
                    chunks += 1
            if fitting:
                reports.append(TaskReport(id=task_id, ops=ops[:fitting]))
            if fitting == len(ops):
                del self._outbox[task_id]
            else:
                self._outbox[task_id] = ops[fitting:]
        if not self._outbox:
            self.waiting.clear()
        return reports

    def recorded(self, reports: list[TaskReport], refused: dict[int, str]) -> None:
        for report in reports:
            waiter = self._settling.get(report.id)
            if waiter is not None and report.id not in self._outbox:
                del self._settling[report.id]
                if report.id in refused:
                    waiter.set_exception(TaskGone(refused[report.id]))
                else:
                    waiter.set_result(None)


Reports = ReferenceReports | BatchedReports


class LiveOutput:
    """A running task's output, shipped every LOG_SHIP_SECONDS from LOG_SHIP_SECONDS on, and what
    is left once it ended. A short task's output goes in that one last pass, with no shipper task
    of its own: a worker ends hundreds of them a second."""

    def __init__(self, ship: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        self._ship = ship  # ships until the event is set, then once more
        self._finished = asyncio.Event()
        self._shipping: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(LOG_SHIP_SECONDS, self._start)
        self._flushed = False

    def _start(self) -> None:
        self._shipping = asyncio.ensure_future(self._ship(self._finished))

    async def flush(self) -> None:
        """Ship what is left, and stop. A task flushes at each step of its end: once it has, there is
        nothing left to do."""
        if self._flushed:
            return
        self._finished.set()
        self._timer.cancel()
        if self._shipping is None:  # it never started: the last pass runs here
            await self._ship(self._finished)
        else:
            await asyncio.gather(self._shipping, return_exceptions=True)
        self._flushed = True


class Agent:
    def __init__(
        self, config: WorkerConfig, client: WorkerClient, root: Path, containment: Containment | None = None, account: identity.Account | None = None,
    ) -> None:
        self.config = config
        self.account = account  # the tasks' OS account (--task-user), else the worker's own
        self.client = client
        self.root = root
        self.containment = containment or Containment()
        self.stopping = client.stopping
        self.slots = config.slots
        self.reports: Reports = BatchedReports(client)
        self.held: collections.deque[tuple[WorkerTaskResp, float]] = collections.deque()  # taken, not started; since when
        self.running: dict[int, WorkerTaskResp] = {}
        self.processes: dict[int, runner.Child] = {}
        self.unsettled: set[int] = set()  # tasks taken and not yet committed or released
        self.releasing: set[int] = set()  # handed back, the coordinator's answer not yet here
        self.cancelled: set[uuid_module.UUID] = set()  # tasks a user cancelled while we held them
        self.gone: set[int] = set()  # tasks the coordinator no longer gives to us
        self._free_slots = [Slot(n, root) for n in reversed(range(self.slots))]
        self.folders = FolderPool(root / "tasks")
        self._longest_recent = 0.0  # seconds the last task ran: long tasks are not prefetched
        self._changed = asyncio.Event()  # a slot freed, a task arrived, or a report is waiting
        self._busy = asyncio.Event()  # wakes the heartbeat loop when a task is taken
        self._asking = False  # an exchange that takes tasks is on its way
        self.executions: set[asyncio.Task[None]] = set()
        self._started: dict[int, float] = {}  # running tasks: when they started
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        environment = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENVIRONMENT}
        # Python buffers a task's output in 8 KiB blocks when it goes to a file: the live output
        # (`h.logs()`, the log view) would stay empty until the task ends. A task may set it to "".
        if not environment.get("PYTHONUNBUFFERED"):
            environment["PYTHONUNBUFFERED"] = "1"
        if account is not None:
            environment.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
            log.info("tasks run as %s (uid %d)", account.name, account.uid)
        elif os.geteuid() == 0:
            log.warning("tasks run as root: they can read this worker's memory and do anything on this host (see --task-user)")
        self._base_environment = _encoded(environment)
        self.retiring = False
        self.heartbeat_interval = heartbeat_seconds(config)  # lowered by ``agree``
        self._cores = len(os.sched_getaffinity(0)) / self.slots  # what each task may use, as reported with its cost
        self._report_usage = False  # set by ``agree``: a coordinator that does not keep it refuses the field
        self._nvidia_smi = gpu.nvidia_smi()
        self._gpu_peaks: dict[int, GpuPeak] = {}  # running tasks' GPU memory, where the host has nvidia-smi

    def agree(self, registration: RegisterWorkerResp) -> float:
        """Take the coordinator's terms: heartbeat well within its heartbeat timeout (a longer
        interval would get the worker removed while it runs, and its tasks run twice). Returns the
        worker's lifetime in seconds from now."""
        self._report_usage = registration.keeps_usage
        if isinstance(self.reports, BatchedReports):
            self.reports.logs_in_exchange = registration.exchanges_logs
        timeout = registration.heartbeat_timeout
        if timeout is not None and self.heartbeat_interval > timeout.total_seconds() / HEARTBEATS_PER_TIMEOUT:
            self.heartbeat_interval = timeout.total_seconds() / HEARTBEATS_PER_TIMEOUT
            log.warning(
                "--heartbeat-interval %s is too long for the coordinator's heartbeat timeout of %s: heartbeating every %.1fs",
                format_duration(self.config.heartbeat_interval), format_duration(timeout), self.heartbeat_interval,
            )
        if registration.lifetime is not None:
            return registration.lifetime.total_seconds()
        # a coordinator of the reference says only when the token expires, by its wall clock
        return float(jwt.decode(registration.token, options={"verify_signature": False})["exp"]) - time.time()

    @property
    def busy(self) -> bool:
        return bool(self.running or self.held)

    # --- background loops -----------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Heartbeats on their own timer. While the worker holds tasks, each heartbeat is held open
        by the coordinator and answers at once if one is cancelled, so it is stopped within a second."""
        interval = self.heartbeat_interval
        while True:
            if not self.busy:
                await self.client.heartbeat(interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._busy.wait(), interval)
                continue
            signal_ = await self.client.heartbeat(interval, wait=interval)
            for task_uuid in signal_.cancel if signal_ else ():
                await self.cancel(task_uuid)

    async def cancel(self, task_uuid: uuid_module.UUID) -> None:
        if task_uuid in self.cancelled:
            return
        for held in list(self.held):
            task = held[0]
            if task.uuid == task_uuid:  # never started: it ends here
                log.info("task %s: cancelled before it started", task.uuid)
                self.held.remove(held)
                self._taken_off(task)
                with contextlib.suppress(TaskGone):  # taken back (the coordinator re-queued it): nothing to end
                    await self.reports.outcome(task, "Cancel")
                    await self.reports.commit(task, TaskResultSpec(exit_status=0, msg=TaskResultMessage.UserCancellation))
                return
        for task_id, task in self.running.items():
            if task.uuid == task_uuid:
                log.info("task %s: cancelled, or taken back by the coordinator; stopping it", task.uuid)
                self.cancelled.add(task_uuid)
                self._in_background(self.kill(task_id))  # the others' cancellations need not wait for its grace period
                return

    async def serve(self) -> None:
        """Take and run tasks until stopped, evicted, or retired at the end of the lifetime:
        through protocol v2 when the coordinator has it, else the reference's protocol."""
        try:
            first = await self.client.exchange([], self._capacity(), 0, self._holding)
        except MitoError as exc:
            if exc.status not in (404, 405):
                raise
            log.info("the coordinator has no worker protocol v2: one task at a time, as the reference")
            await self._serve_reference()
            return
        self._receive(first)
        loops = asyncio.gather(self._send_reports(), self._poll_for_tasks(), self._release_stale())
        try:
            await asyncio.wait({loops, self._failed}, return_when=asyncio.FIRST_COMPLETED)
            if self._failed.done():
                self._failed.result()  # raises what ended a task's execution
            await loops
        finally:
            loops.cancel()
            loops.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning

    async def _serve_reference(self) -> None:
        if self.slots > 1:
            log.warning("the reference's protocol runs one task at a time: --slots %d is not used", self.slots)
        self.reports = ReferenceReports(self.client)
        states = asyncio.create_task(self.reports.run())
        wait = min(self.config.polling_interval.total_seconds(), MAX_WAIT_SECONDS)
        try:
            while not self.stopping.is_set() and not self.retiring:
                task = await self.client.fetch(wait)
                if task is not None:
                    self.unsettled.add(task.id)
                    self.running[task.id] = task
                    self._busy.set()
                    self._busy.clear()
                    await self.execute(task, self._free_slots[0])
        finally:
            states.cancel()

    def _capacity(self) -> int:
        """How many more tasks to ask for: free slots, plus a prefetch while tasks are short (a
        long task must not keep others waiting behind it). A slot whose task has no process left
        is free: that task packs and uploads its outputs beside the next one (``execute``)."""
        if self.retiring or self.stopping.is_set():
            return 0
        now = time.monotonic()
        short = self._longest_recent < SHORT_TASK_SECONDS and all(
            now - started < SHORT_TASK_SECONDS for started in self._started.values()
        )
        prefetch = min(PREFETCH_PER_SLOT * self.slots, MAX_EXCHANGE_TASKS) if short else 0
        return max(0, min(MAX_EXCHANGE_TASKS, len(self._free_slots) + prefetch - len(self.held)))

    def _holding(self) -> list[int]:
        return sorted(self.unsettled)

    def _receive(self, answer: ExchangeResp) -> None:
        for refusal in answer.refused:
            log.warning("task %s: the coordinator refused a report (%s)", refusal.id, refusal.msg)
            self.unsettled.discard(refusal.id)
            if refusal.status == 404:  # re-queued or ended elsewhere: stop working on it
                self.gone.add(refusal.id)
                if refusal.id in self.running:
                    self._in_background(self.kill(refusal.id))
        arrived = time.monotonic()
        for task in answer.tasks:
            if task.id in self.releasing:
                # taken again once our release applied (a new claim), or handed over again before
                # the release left (a retried exchange): then the release must not leave at all
                assert isinstance(self.reports, BatchedReports)
                self.reports.withdraw_release(task.id)
                self.releasing.discard(task.id)
            elif task.id in self.unsettled:  # handed over again after a lost answer: we have it
                continue
            self.unsettled.add(task.id)
            self.held.append((task, arrived))
        if answer.tasks:
            self._busy.set()
            self._busy.clear()
        self._start_held()

    async def _send_reports(self) -> None:
        """One exchange at a time carries every report made meanwhile, and takes tasks for the
        slots that freed unless a long poll is already asking."""
        reports = self.reports
        assert isinstance(reports, BatchedReports)
        while True:
            await reports.waiting.wait()
            await self._linger()
            batch = reports.take()
            want = 0 if self._asking else self._capacity()
            self._asking |= want > 0
            try:
                answer = await self.client.exchange(batch, want, 0, self._holding)
            finally:
                if want:
                    self._asking = False
            released = {report.id for report in batch if report.ops == ["Release"]}
            for report in batch:
                if any(isinstance(op, CommitOp) for op in report.ops) or report.id in released & self.releasing:
                    self.releasing.discard(report.id)
                    self.unsettled.discard(report.id)
                    self.gone.discard(report.id)
            # a refused release (the task had gone back already: a retried request) leaves nothing
            # to do, and must not touch the task if a long poll of ours has taken it again since
            answer.refused = [refusal for refusal in answer.refused if refusal.id not in released]
            reports.recorded(batch, {r.id: r.msg for r in answer.refused})
            self._receive(answer)
            self._changed.set()
            if self.retiring and not self.busy and not reports.waiting.is_set():
                return

    async def _linger(self) -> None:
        """Let reports gather a moment, so that one exchange carries many: up to LINGER_SECONDS
        while only a task's first states wait, longer while the worker works through tasks it
        took ahead. An idle worker, or one running short of tasks, sends at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (LINGER_BUSY_SECONDS if self.held else LINGER_SECONDS)
        while True:
            short_of_tasks = len(self.held) < self.slots and self._capacity() > 0
            remaining = deadline - loop.time()
            if not self.busy or short_of_tasks or self.retiring or remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def _poll_for_tasks(self) -> None:
        """With room for tasks and nothing to report, wait for tasks in a long poll (answered the
        moment one is ready); reports go beside it, never behind it."""
        wait = min(self.config.polling_interval.total_seconds(), MAX_WAIT_SECONDS)
        reports = self.reports
        assert isinstance(reports, BatchedReports)
        while not self.retiring:
            want = self._capacity()
            if want == 0 or self._asking or reports.waiting.is_set():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHORT_TASK_SECONDS):
                        await self._changed.wait()
                continue
            self._asking = True
            try:
                answer = await self.client.exchange([], want, wait, self._holding)
            finally:
                self._asking = False
            self._receive(answer)
            if answer.tasks:  # they start before the next long poll is sent
                await asyncio.sleep(0)

    async def _release_stale(self) -> None:
        """Hand back the tasks taken ahead that wait behind long tasks (every slot busy for more
        than SHORT_TASK_SECONDS) for HOLD_SECONDS: another worker may be idle."""
        reports = self.reports
        assert isinstance(reports, BatchedReports)
        while True:
            await asyncio.sleep(SHORT_TASK_SECONDS)
            now = time.monotonic()
            stuck = len(self._started) >= self.slots and all(now - started > SHORT_TASK_SECONDS for started in self._started.values())
            while self.held and (self.retiring or (stuck and self.held[0][1] < now - HOLD_SECONDS)):
                self.hand_back_oldest()
            if self.retiring and not self.busy and not reports.waiting.is_set():
                return

    def hand_back_oldest(self) -> None:
        """Release the task taken ahead longest ago. Until the coordinator answers, the task still
        counts as held (so a retried exchange does not get it handed over again), but if it comes
        back meanwhile it is a new claim to run (a long poll of ours took it once it was Ready)."""
        assert isinstance(self.reports, BatchedReports)
        task, _ = self.held.popleft()
        log.info("task %s: handed back, this worker's slots are busy with long tasks", task.uuid)
        self._taken_off(task)
        self.releasing.add(task.id)
        self.reports.release(task)

    def _start_held(self) -> None:
        while self.held and self._free_slots and not self.stopping.is_set():
            task, _ = self.held.popleft()
            slot = self._free_slots.pop()
            self.running[task.id] = task
            self._in_background(self._execute_in(task, slot))

    async def _execute_in(self, task: WorkerTaskResp, slot: Slot) -> None:
        freed = False

        def free() -> None:  # the slot may run its next task: this one has no process left, or ended
            nonlocal freed
            if not freed:
                freed = True
                self._free_slots.append(slot)
                self._start_held()
                self._changed.set()

        try:
            await self.execute(task, slot, free)
        except Exception as exc:  # eviction, or a failure of the worker itself: it ends the worker
            if not self._failed.done():
                self._failed.set_exception(exc)
        finally:
            free()

    def _in_background(self, work: Awaitable[None]) -> None:
        """Run ``work`` beside the loops; it is cancelled with the executions when the worker stops."""
        task = asyncio.ensure_future(work)
        self.executions.add(task)
        task.add_done_callback(self.executions.discard)

    def _taken_off(self, task: WorkerTaskResp) -> None:
        self.running.pop(task.id, None)
        self.cancelled.discard(task.uuid)

    async def retire_at(self, expires: float, work: asyncio.Task[None]) -> None:
        """Take no new task once the token is about to expire (``expires``: on the monotonic
        clock, which a wrong or changed wall clock does not move); leave after the current ones,
        while the token still works, so the coordinator drops the worker at once (reference pain 14)."""
        await asyncio.sleep(max(0.0, expires - time.monotonic() - RETIRE_MARGIN_SECONDS))
        log.info("the worker's lifetime is ending: leaving after the current tasks")
        self.retiring = True
        self._changed.set()
        if isinstance(self.reports, BatchedReports):
            self.reports.waiting.set()  # one last exchange hands back what is held and sees if we are done
        elif not self.running:
            work.cancel()

    # --- one task -------------------------------------------------------------------------------

    def close(self) -> None:
        """The worker stops, its tasks ended: the slots' output files go."""
        for slot in self._free_slots:
            slot.close()

    async def execute(self, task: WorkerTaskResp, slot: Slot, free: Callable[[], None] = lambda: None) -> None:
        """Run ``task`` in ``slot``. Once its processes are gone, ``free`` lets the slot start its
        next task while this one finishes (its outputs packed and uploaded, its reports made); one
        task at a time finishes in a slot. A task with nothing to pack finishes in the same turn of
        the loop, before the next one starts: yielding to it first measured slower."""
        log.debug("task %s: %s", task.uuid, " ".join(task.spec.args))
        started = time.monotonic()
        self._started[task.id] = started
        folders: TaskFolders | None = None
        output: TaskOutput | None = None
        live: LiveOutput | None = None
        finishing = False

        async def flush_output() -> None:  # before the outcome: the log is whole once the task ends
            if live is not None:
                await live.flush()

        async def finish_beside_next() -> None:
            nonlocal finishing
            await slot.finishing.acquire()
            finishing = True
            free()

        try:
            try:
                output = slot.output()
                folders = self.folders.take()
            except OSError as exc:  # e.g. a full disk: this task ends, the worker goes on
                log.error("task %s: its folders cannot be made: %s", task.uuid, exc)
                result = await self._cancel(task, TaskResultMessage.WorkerError, None)
            else:
                live = LiveOutput(functools.partial(self._ship_logs, task, output))
                result = await self._prepare(task, folders, output) or await self._run(task, slot, folders, output, flush_output, finish_beside_next)
            await flush_output()
            self._still_ours(task)
            await self.reports.commit(task, result)
            # an ordinary end is routine (a busy worker ends hundreds a second): logged at DEBUG
            level = logging.INFO if result.msg else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "task %s committed: exit status %s%s: %s", task.uuid, result.exit_status, f" ({result.msg.value})" if result.msg else "", shlex.join(task.spec.args)[:200])
        except TaskGone:
            log.warning("task %s is no longer assigned to this worker; dropping it", task.uuid)
            self.unsettled.discard(task.id)  # should it be handed to us again, that is a new claim
            self.gone.discard(task.id)
        except MitoError as exc:  # a refusal we cannot act on must not take the worker down
            log.error("task %s: the coordinator refused a report (%s); dropping the task", task.uuid, exc)
        finally:
            await flush_output()
            if folders is not None:
                self.folders.give_back(folders)  # outputs do not linger on disk
            if output is not None:
                slot.give_back(output)
            if finishing:
                slot.finishing.release()
            del self._started[task.id]
            self._longest_recent = time.monotonic() - started
            self._taken_off(task)
            if isinstance(self.reports, ReferenceReports):
                self.unsettled.discard(task.id)

    def _still_ours(self, task: WorkerTaskResp) -> None:
        if task.id in self.gone:
            raise TaskGone(f"Task {task.id} not found")

    async def _prepare(self, task: WorkerTaskResp, folders: TaskFolders, output: TaskOutput) -> TaskResultSpec | None:
        """Resources, then the watch; the outcome if the task ends here, else ``None``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PREPARE_SECONDS
        if task.spec.resources:
            self.reports.state(task, TaskExecState.FetchResource)
        for resource in task.spec.resources:
            target = (folders.resource / resource.local_path).resolve()
            if folders.resource.resolve() not in target.parents:
                return await self._cancel(task, TaskResultMessage.ResourceForbidden, TaskExecState.FetchResourceForbidden)
            try:
                link = await self.client.resource_url(task, resource.remote_file)
                await asyncio.wait_for(self.client.transfer(False, link.url, target), max(1.0, deadline - loop.time()))
            except TimeoutError:
                return await self._cancel(task, TaskResultMessage.FetchResourceTimeout, TaskExecState.FetchResourceTimeout)
            except MitoError as exc:
                log.warning("task %s: resource %s: %s", task.uuid, resource.local_path, exc)
                if exc.status == 404:
                    return await self._cancel(task, TaskResultMessage.ResourceNotFound, TaskExecState.FetchResourceNotFound)
                return await self._cancel(task, TaskResultMessage.ResourceForbidden, TaskExecState.FetchResourceForbidden)
            except OSError as exc:  # the task's own folders cannot take it (paths that clash, a full disk)
                log.warning("task %s: resource %s cannot be written: %s", task.uuid, resource.local_path, exc)
                output.note(f"resource {resource.local_path} cannot be written: {exc.strerror or exc}")
                return await self._cancel(task, TaskResultMessage.WorkerError, TaskExecState.FetchResourceError)
        if task.spec.watch is not None:
            target_uuid, state = task.spec.watch
            self.reports.state(task, TaskExecState.Watch)
            while True:
                remaining = deadline - loop.time()
                try:
                    answer = await self.client.watch(target_uuid, state, min(max(remaining, 0), WATCH_POLL_SECONDS))
                except MitoError as exc:  # e.g. its group is not served here: the state can never be seen
                    log.warning("task %s: watching task %s refused: %s", task.uuid, target_uuid, exc)
                    return await self._cancel(task, TaskResultMessage.WatchTimeout, TaskExecState.WatchTimeout)
                if answer.reached:
                    self.reports.state(task, TaskExecState.WatchFinished)
                    break
                if not answer.possible or loop.time() >= deadline:
                    return await self._cancel(task, TaskResultMessage.WatchTimeout, TaskExecState.WatchTimeout)
        if task.uuid in self.cancelled:
            return await self._cancel(task, TaskResultMessage.UserCancellation, None)
        return None

    async def _cancel(self, task: WorkerTaskResp, message: TaskResultMessage, state: TaskExecState | None) -> TaskResultSpec:
        if state is not None:
            self.reports.state(task, state)
        await self.reports.outcome(task, "Cancel")
        return TaskResultSpec(exit_status=0, msg=message)

    def _environment(self, task: WorkerTaskResp, folders: TaskFolders) -> dict[bytes, bytes]:
        """The task's environment, encoded: ``Popen`` would encode each of the worker's own
        variables again for every task."""
        ours = {
            TASK_ENVIRONMENT_MARK: str(task.uuid),  # MITO_TASK_UUID: also how its orphans are told apart
            "MITO_RESULT_DIR": str(folders.result),
            "MITO_EXEC_DIR": str(folders.exec),
            "MITO_RESOURCE_DIR": str(folders.resource),
            "MITO_NEW_TASK": str(folders.new_task),
        }
        if task.upstream_task_uuid:
            ours["MITO_UPSTREAM_TASK_UUID"] = str(task.upstream_task_uuid)
        return {**self._base_environment, **_encoded(task.spec.envs), **_encoded(ours)}

    async def _ship_logs(self, task: WorkerTaskResp, output: TaskOutput, finished: asyncio.Event) -> None:
        """Send new output while the task runs (and what is left once it ended). At most one
        chunk per stream per tick: a flood skips ahead to its newest part, so neither memory nor
        the coordinator is overwhelmed; sending before reading more gives backpressure. Any bytes
        reach the log view as text (see ``TaskOutput.text``)."""
        offsets = dict.fromkeys(STREAMS, 0)
        while True:
            ended = finished.is_set()
            for stream in STREAMS:
                size = output.size(stream)
                skipped = size - LIVE_LOG_CHUNK > offsets[stream]
                offsets[stream] = max(offsets[stream], size - LIVE_LOG_CHUNK)
                if size <= offsets[stream]:
                    continue
                data = output.read(stream, offsets[stream], LIVE_LOG_CHUNK)
                text = output.text(stream, data, final=ended and offsets[stream] + len(data) >= size, skipped=skipped)
                chunk = LogChunk(stream=stream, offset=offsets[stream], length=len(data), data=text)
                try:
                    await self.reports.log(task, chunk, last=ended)
                except (TaskGone, MitoError) as exc:
                    log.debug("task %s: live output not shipped: %s", task.uuid, exc)
                    return
                offsets[stream] += len(data)
            if ended:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOG_SHIP_SECONDS):
                    await finished.wait()

    async def _execute_process(self, task: WorkerTaskResp, slot: Slot, folders: TaskFolders, output: TaskOutput) -> tuple[runner.Outcome, TaskUsage | None]:
        """The process's outcome and what it cost (None if it never started)."""
        self._hand_over(folders)
        cgroup_cpu = self.containment.cpu_seconds(slot.index)
        started = time.monotonic()
        try:
            child = runner.spawn(task.spec.args, self._environment(task, folders), folders.work, output.descriptors["stdout"], output.descriptors["stderr"], self.account)
        except (OSError, ValueError) as exc:  # the program does not exist or cannot be executed, or its environment cannot be given
            log.warning("task %s: cannot start %s: %s", task.uuid, task.spec.args[0], exc)
            output.note(f"cannot start {task.spec.args[0]!r}: {getattr(exc, 'strerror', None) or exc}")
            return runner.Outcome(exit_status=127 if isinstance(exc, FileNotFoundError) else 126, timed_out=False), None
        self.processes[task.id] = child
        moving = self.containment.started(slot.index, child.pid)
        if self._nvidia_smi is not None:
            self._gpu_peaks[task.id] = GpuPeak(self._nvidia_smi, lambda: self.containment.processes(slot.index, child.pid))
        self.reports.state(task, TaskExecState.ExecSpawned)
        if task.uuid in self.cancelled or task.id in self.gone:  # stopped while it was being started
            self._in_background(self.kill(task.id))
        try:
            outcome = await runner.wait(child, task.timeout.total_seconds())
            wall = time.monotonic() - started
        finally:
            sampler = self._gpu_peaks.pop(task.id, None)
            gpu_peak = await sampler.stop() if sampler is not None else None  # no query of its left running
            if moving is not None:
                await moving
            del self.processes[task.id]
            others = {str(other.uuid) for other_id, other in self.running.items() if other_id in self.processes}  # those with a process
            queries = [peak.pid for peak in self._gpu_peaks.values() if peak.pid is not None]  # the worker's own children
            self.containment.end(slot.index, [other.pid for other in self.processes.values()] + queries, others)
        return outcome, self._usage(outcome, wall, cgroup_cpu, self.containment.cpu_seconds(slot.index), gpu_peak)

    def _usage(
        self, outcome: runner.Outcome, wall: float, cgroup_before: float | None, cgroup_after: float | None, gpu_peak: int | None,
    ) -> TaskUsage | None:
        """What the run cost. CPU: the slot cgroup's, which counts what the task detached too (but
        not what ran before the move into it), or the process's own with what it waited for; the
        larger. Memory: the largest resident size of those processes; GPU memory: the sampled peak."""
        usage = outcome.usage
        if usage is None or not self._report_usage:
            return None
        cpu = usage.ru_utime + usage.ru_stime
        if cgroup_before is not None and cgroup_after is not None:
            cpu = max(cpu, cgroup_after - cgroup_before)
        return TaskUsage(wall_s=wall, cpu_s=cpu, max_rss=usage.ru_maxrss * 1024, cores=self._cores, gpu_max_memory=gpu_peak)

    def _hand_over(self, folders: TaskFolders) -> None:
        """Under --task-user, the task's folders (the resources fetched into them included)
        become the account's; the slot's files (output logs, archives) stay the worker's."""
        if self.account is not None:
            self.account.own(folders.root)

    async def _run(
        self, task: WorkerTaskResp, slot: Slot, folders: TaskFolders, output: TaskOutput,
        flush_output: Callable[[], Awaitable[None]], finish_beside_next: Callable[[], Awaitable[None]],
    ) -> TaskResultSpec:
        self.reports.state(task, TaskExecState.ExecPending)
        try:
            outcome, usage = await self._execute_process(task, slot, folders, output)
            await finish_beside_next()
        finally:
            await flush_output()  # the shipper sends what is left and stops
        if self.stopping.is_set():  # killed by our own shutdown: unregistering re-queues it
            raise asyncio.CancelledError()
        cancelled = task.uuid in self.cancelled
        stopped = outcome.timed_out or cancelled
        self.reports.state(task, TaskExecState.ExecTimeout if outcome.timed_out else TaskExecState.ExecFinished)
        self._still_ours(task)
        await self.reports.outcome(task, "Cancel" if stopped else "Finish")
        self.reports.state(task, TaskExecState.UploadResult)
        try:
            async with asyncio.timeout(UPLOAD_SECONDS):
                await self._upload_outputs(task, slot, folders, output)
        except TimeoutError:
            log.warning("task %s: its outputs were not uploaded within %d s", task.uuid, UPLOAD_SECONDS)
            self.reports.state(task, TaskExecState.UploadResultTimeout)
            return TaskResultSpec(exit_status=outcome.exit_status, msg=TaskResultMessage.UploadResultTimeout, usage=usage)
        except (OSError, UploadFailed) as exc:  # what the task left cannot be packed, or stored
            log.warning("task %s: its outputs were not kept: %s", task.uuid, exc)
            return TaskResultSpec(exit_status=outcome.exit_status, msg=TaskResultMessage.WorkerError, usage=usage)
        self.reports.state(task, TaskExecState.UploadCancelledResult if stopped else TaskExecState.UploadFinishedResult)
        message = TaskResultMessage.ExecTimeout if outcome.timed_out else TaskResultMessage.UserCancellation if cancelled else None
        # only a task that finished chains its successor (the coordinator refuses the others too)
        if message is None and not await self._submit_downstream(task, folders):
            message = TaskResultMessage.SubmitNewTaskFailed
        self.reports.state(task, TaskExecState.UploadResultFinished)
        return TaskResultSpec(exit_status=outcome.exit_status, msg=message, usage=usage)

    async def _upload_outputs(self, task: WorkerTaskResp, slot: Slot, folders: TaskFolders, output: TaskOutput) -> None:
        deadline = time.monotonic() + UPLOAD_SECONDS
        packs: list[tuple[ArtifactContentType, Callable[[], Path]]] = []
        if packing.has_files(folders.result):
            packs.append((ArtifactContentType.result, lambda: packing.pack_directory(folders.result, "result", slot.archive("result.tar.gz"), deadline)))
        if packing.has_files(folders.exec):
            packs.append((ArtifactContentType.exec_log, lambda: packing.pack_directory(folders.exec, "exec-log", slot.archive("exec-log.tar.gz"), deadline)))
        if task.spec.terminal_output:
            packs.append((ArtifactContentType.std_log, lambda: packing.pack_std_logs(output, slot.archive("std-log.tar.gz"))))
        for content_type, pack in packs:
            archive = await asyncio.to_thread(pack)  # packing must not starve the event loop
            request = UploadOp(Upload=UploadArtifactReq(content_type=content_type, content_length=archive.stat().st_size))
            for attempt in range(UPLOAD_URL_ATTEMPTS):
                try:
                    answer = await self.client.report(task, request)
                except MitoError as exc:
                    if exc.status == 403:  # over quota: the other outputs may still fit
                        log.warning("task %s: %s not uploaded: %s", task.uuid, content_type.value, exc)
                        break
                    raise
                try:
                    if answer.url:
                        await self.client.transfer(True, answer.url, archive)
                    break
                except MitoError as exc:  # e.g. the signed URL expired during a long outage: ask for a new one
                    if attempt + 1 == UPLOAD_URL_ATTEMPTS:
                        raise UploadFailed(f"{content_type.value}: {exc}") from exc
                    log.warning("task %s: uploading %s failed (%s); asking for a new URL", task.uuid, content_type.value, exc)
            archive.unlink()

    async def _submit_downstream(self, task: WorkerTaskResp, folders: TaskFolders) -> bool:
        """Submit the task the command wrote to ``$MITO_NEW_TASK``, if any. False if it was invalid."""
        try:
            data = read_regular_file(folders.new_task, MAX_NEW_TASK_BYTES)
        except UnsafeFile as exc:
            log.warning("task %s: MITO_NEW_TASK not read: %s", task.uuid, exc)
            return False
        if data is None or not data.strip():
            return True
        try:
            request = SubmitTaskReq.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            log.warning("task %s: invalid downstream task in MITO_NEW_TASK: %s", task.uuid, exc)
            return False
        try:
            await self.reports.settle(task)  # the coordinator must know the task ended
            await self.client.report(task, SubmitOp(Submit=request))
        except MitoError as exc:
            if exc.status >= 500 or exc.status == 0:
                raise
            log.warning("task %s: downstream task refused: %s", task.uuid, exc)
            return False
        return True

    async def kill(self, task_id: int) -> None:
        child = self.processes.get(task_id)
        if child is not None and child.returncode is None:
            await runner.stop_group(child, grace=runner.KILL_GRACE_SECONDS)

    async def kill_all(self) -> None:
        await asyncio.gather(*(self.kill(task_id) for task_id in list(self.processes)))



def _encoded(variables: dict[str, str]) -> dict[bytes, bytes]:
    return {os.fsencode(name): os.fsencode(value) for name, value in variables.items()}


def heartbeat_seconds(config: WorkerConfig) -> float:
    """How often the worker heartbeats, as configured: at most the longest long poll (a heartbeat
    is one while the worker holds tasks). ``Agent.agree`` may lower it to fit the coordinator."""
    return min(config.heartbeat_interval.total_seconds(), MAX_WAIT_SECONDS)


async def register(config: WorkerConfig) -> tuple[HttpSession, RegisterWorkerResp]:
    session = HttpSession(config.coordinator_addr, parallel=REQUESTS_BESIDE_TASKS + REQUESTS_PER_SLOT * config.slots)
    # retain: registering a worker must not log its user out of their other sessions (the reference does);
    # not saved: the user token is only traded for the worker's, and tasks can read the credentials file
    user, token = await login_token(session, Credentials(config.credential_path), config.user, config.password, retain=True, save=False)
    session.token = token
    # the wire carries whole seconds: rounded up, the coordinator waits a little longer, never less
    interval = timedelta(seconds=max(1, math.ceil(heartbeat_seconds(config))))
    request = RegisterWorkerReq(
        tags=config.tags, labels=config.labels, groups=config.groups, lifetime=config.lifetime, heartbeat_interval=interval
    )
    try:
        registration: RegisterWorkerResp = await session.call("POST", "workers", request, RegisterWorkerResp)
    except MitoError as exc:
        if exc.status != 400 or "heartbeat_interval" not in exc.msg:
            raise
        # a coordinator of an earlier release takes no interval (it goes by its heartbeat timeout alone)
        without = request.model_copy(update={"heartbeat_interval": None})
        registration = await session.call("POST", "workers", without, RegisterWorkerResp)
    session.token = registration.token
    log.info("registered as worker %s (user %s%s)", registration.worker_id, user, "" if config.user else ", the first in the credentials file")
    return session, registration


async def run(config: WorkerConfig) -> int:
    """The ``mito worker`` process: returns its exit code."""
    identity.conceal(config.password)
    account = identity.Account.named(config.task_user) if config.task_user else None  # refused before registering
    setup_logging("worker", "", file_log=False, log_path=None)  # the log file is named after the worker's UUID
    try:
        session, registration = await register(config)
    except MitoError as exc:
        log.error("cannot register with %s: %s", config.coordinator_addr, exc)
        return 1
    if config.shared_log:  # one file for all the workers of a host, each line tagged with its worker
        setup_logging("worker", "workers", True, config.log_path, prefix=f"[worker:{registration.worker_id}] ")
    else:
        setup_logging("worker", str(registration.worker_id), config.file_log, config.log_path)
    stopping = asyncio.Event()
    client = WorkerClient(session, stopping)
    root = account.scratch_root(str(registration.worker_id)) if account else cache_dir() / str(registration.worker_id)
    containment = Containment.start(config.task_cgroup)
    agent = Agent(config, client, root, containment, account)
    expires = time.monotonic() + agent.agree(registration)  # before the loops that follow its terms start
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(agent.serve())
    beats = asyncio.create_task(agent.heartbeats())
    retire = asyncio.create_task(agent.retire_at(expires, work))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("stopping: the running tasks (if any) are killed and handed back")
        stopping.set()
        asyncio.ensure_future(agent.kill_all())
        work.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        done, _ = await asyncio.wait({work, beats}, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            if not finished.cancelled() and isinstance(finished.exception(), Evicted):
                log.warning("the coordinator ended this worker: %s", finished.exception())
            elif not finished.cancelled() and finished.exception() is not None:
                log.error("worker failed: %s", finished.exception(), exc_info=finished.exception())
                code = 1
    finally:
        for task in (work, beats, retire, *agent.executions):
            task.cancel()
        await agent.kill_all()
        await asyncio.gather(work, beats, retire, *agent.executions, return_exceptions=True)
        await client.unregister()
        session.close()
        agent.close()
        containment.close()
        shutil.rmtree(root, ignore_errors=True)
    return code
