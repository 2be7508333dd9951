"""The worker: registers, heartbeats on its own timer, long-polls for tasks and runs them one at a
time (reference 4.12, with SPEC's improvements: long-poll dispatch, retries with backoff instead of
exiting on a coordinator hiccup, process-group kills, outputs streamed to files)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import jwt
from pydantic import BaseModel, ValidationError

from mito_lab.client.api import login_token
from mito_lab.client.credentials import Credentials
from mito_lab.client.http import HttpSession, MitoError
from mito_lab.config import WorkerConfig, cache_dir
from mito_lab.logs import setup_logging
from mito_lab.wire import (
    LIVE_LOG_CHUNK,
    MAX_WAIT_SECONDS,
    ArtifactContentType,
    ArtifactSource,
    CommitOp,
    DownloadResp,
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
    TaskResultMessage,
    TaskResultSpec,
    UploadArtifactReq,
    UploadOp,
    WatchResp,
    WorkerSignal,
    WorkerTaskResp,
)
from mito_lab.worker import packing, runner

log = logging.getLogger("mito_lab.worker")
T = TypeVar("T")
MAX_BACKOFF_SECONDS = 30.0
PREPARE_SECONDS = 30 * 60  # resources plus watch, as the reference
RETIRE_MARGIN_SECONDS = 30.0
WATCH_POLL_SECONDS = 60.0
LOG_SHIP_SECONDS = 0.5
UPLOAD_URL_ATTEMPTS = 3
# Variables of the worker's own configuration that a task must not inherit.
PRIVATE_ENVIRONMENT = ("MITO_PASSWORD", "MITO_USER")


class Evicted(Exception):
    """The coordinator rejected this worker's token: it was removed, shut down or expired."""


class TaskGone(Exception):
    """The coordinator no longer has this task assigned to us (re-queued or cancelled)."""


class WorkerClient:
    """The worker protocol. Connection errors and 5xx are retried with capped exponential backoff;
    401 means eviction; 404 on a report means the task is no longer ours."""

    def __init__(self, session: HttpSession, stopping: asyncio.Event) -> None:
        self.session = session
        self.stopping = stopping

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
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
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def call(self, method: str, path: str, body: BaseModel | None = None, response: type[Any] | None = None, **options: Any) -> Any:
        return await self._retrying(lambda: self.session.call(method, path, body, response, **options), f"{method} /{path}")

    async def heartbeat(self, wait: float = 0) -> WorkerSignal | None:
        """A heartbeat; with ``wait`` it is held open until a cancellation comes or ``wait`` passes."""
        return await self.call("POST", "workers/heartbeat", None, WorkerSignal, wait=wait)

    async def watch(self, target: uuid_module.UUID, state: TaskExecState, wait: float) -> WatchResp:
        return await self.call("GET", f"workers/tasks/{target}/reaches/{state.value}", None, WatchResp, wait=wait)

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


class TaskDirectories:
    """A fresh scratch tree per task under the worker's cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.result, self.exec, self.resource, self.work = (root / n for n in ("result", "exec", "resource", "work"))
        self.std_log = root / "std-log"
        self.archives = root / "archives"
        self.new_task = root / "new_task.json"

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for directory in (self.result, self.exec, self.resource, self.work, self.std_log, self.archives):
            directory.mkdir(parents=True)


class Agent:
    def __init__(self, config: WorkerConfig, client: WorkerClient, root: Path) -> None:
        self.config = config
        self.client = client
        self.root = root
        self.stopping = client.stopping
        self.process: asyncio.subprocess.Process | None = None
        self.current: WorkerTaskResp | None = None
        self.cancelled: set[uuid_module.UUID] = set()  # tasks a user cancelled while we ran them
        self._busy = asyncio.Event()  # wakes the heartbeat loop when a task starts
        self._states: asyncio.Queue[tuple[WorkerTaskResp, TaskExecState]] = asyncio.Queue()
        self.retiring = False

    # --- background loops -----------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Heartbeats on their own timer. While a task runs, each heartbeat is held open by the
        coordinator and answers at once if the task is cancelled, so it is killed within a second."""
        interval = min(self.config.heartbeat_interval.total_seconds(), MAX_WAIT_SECONDS)
        while True:
            if self.current is None:
                await self.client.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._busy.wait(), interval)
                continue
            signal_ = await self.client.heartbeat(wait=interval)
            current = self.current
            if signal_ and current is not None and current.uuid in signal_.cancel and current.uuid not in self.cancelled:
                log.info("task %s: cancelled by a user; stopping it", current.uuid)
                self.cancelled.add(current.uuid)
                await self.kill_current()

    async def report_states(self) -> None:
        """Send exec states in order, off the task's critical path; the states reached while a
        report was on its way go together in the next one."""
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

    def state(self, task: WorkerTaskResp, state: TaskExecState) -> None:
        self._states.put_nowait((task, state))

    async def serve(self) -> None:
        """Fetch and run tasks until stopped, evicted, or retired at the end of the lifetime."""
        wait = min(self.config.polling_interval.total_seconds(), MAX_WAIT_SECONDS)
        while not self.stopping.is_set() and not self.retiring:
            task = await self.client.fetch(wait)
            if task is not None:
                await self.execute(task)

    async def retire_at(self, expires: float, work: asyncio.Task[None]) -> None:
        """Take no new task once the token is about to expire; leave after the current one, while
        the token still works, so the coordinator drops the worker at once (reference pain 14)."""
        await asyncio.sleep(max(0.0, expires - time.time() - RETIRE_MARGIN_SECONDS))
        log.info("the worker's lifetime is ending: leaving after the current task")
        self.retiring = True
        if self.current is None:
            work.cancel()

    # --- one task -------------------------------------------------------------------------------

    async def execute(self, task: WorkerTaskResp) -> None:
        log.info("task %s: %s", task.uuid, " ".join(task.spec.args))
        dirs = TaskDirectories(self.root / "task")
        dirs.reset()
        self.current = task
        self._busy.set()
        self._busy.clear()
        try:
            result = await self._prepare(task, dirs) or await self._run(task, dirs)
            await self._states.join()  # every exec state is recorded before the commit
            await self.client.report(task, CommitOp(Commit=result))
            log.info("task %s committed: exit status %s%s", task.uuid, result.exit_status, f" ({result.msg.value})" if result.msg else "")
        except TaskGone:
            log.warning("task %s is no longer assigned to this worker; dropping it", task.uuid)
        except MitoError as exc:  # a refusal we cannot act on must not take the worker down
            log.error("task %s: the coordinator refused a report (%s); dropping the task", task.uuid, exc)
        finally:
            self.current = None
            self.cancelled.discard(task.uuid)
            shutil.rmtree(dirs.root, ignore_errors=True)

    async def _prepare(self, task: WorkerTaskResp, dirs: TaskDirectories) -> TaskResultSpec | None:
        """Resources, then the watch; the outcome if the task ends here, else ``None``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PREPARE_SECONDS
        if task.spec.resources:
            self.state(task, TaskExecState.FetchResource)
        for resource in task.spec.resources:
            target = (dirs.resource / resource.local_path).resolve()
            if dirs.resource.resolve() not in target.parents:
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
        if task.spec.watch is not None:
            target, state = task.spec.watch
            self.state(task, TaskExecState.Watch)
            while True:
                remaining = deadline - loop.time()
                answer = await self.client.watch(target, state, min(max(remaining, 0), WATCH_POLL_SECONDS))
                if answer.reached:
                    self.state(task, TaskExecState.WatchFinished)
                    break
                if not answer.possible or loop.time() >= deadline:
                    return await self._cancel(task, TaskResultMessage.WatchTimeout, TaskExecState.WatchTimeout)
        if task.uuid in self.cancelled:
            return await self._cancel(task, TaskResultMessage.UserCancellation, None)
        return None

    async def _cancel(self, task: WorkerTaskResp, message: TaskResultMessage, state: TaskExecState | None) -> TaskResultSpec:
        if state is not None:
            self.state(task, state)
        await self.client.report(task, "Cancel")
        return TaskResultSpec(exit_status=0, msg=message)

    def _environment(self, task: WorkerTaskResp, dirs: TaskDirectories) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENVIRONMENT}
        env.update(task.spec.envs)
        env.update(
            MITO_TASK_UUID=str(task.uuid),
            MITO_RESULT_DIR=str(dirs.result),
            MITO_EXEC_DIR=str(dirs.exec),
            MITO_RESOURCE_DIR=str(dirs.resource),
            MITO_NEW_TASK=str(dirs.new_task),
        )
        if task.upstream_task_uuid:
            env["MITO_UPSTREAM_TASK_UUID"] = str(task.upstream_task_uuid)
        return env

    async def _ship_logs(self, task: WorkerTaskResp, streams: dict[str, Path], finished: asyncio.Event) -> None:
        """Send new output while the task runs (and what is left once it ended). At most one
        chunk per stream per tick: a flood skips ahead to its newest part, so neither memory nor
        the coordinator is overwhelmed; sending before reading more gives backpressure."""
        offsets = dict.fromkeys(streams, 0)
        while True:
            ended = finished.is_set()
            for stream, path in streams.items():
                size = path.stat().st_size if path.exists() else 0
                offsets[stream] = max(offsets[stream], size - LIVE_LOG_CHUNK)
                if size <= offsets[stream]:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offsets[stream])
                    data = handle.read(LIVE_LOG_CHUNK)
                chunk = LogChunk(stream=stream, offset=offsets[stream], length=len(data), data=data.decode("utf-8", "replace"))
                try:
                    await self.client.report(task, LogOp(Log=chunk))
                except (TaskGone, MitoError) as exc:
                    log.debug("task %s: live output not shipped: %s", task.uuid, exc)
                    return
                offsets[stream] += len(data)
            if ended:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), LOG_SHIP_SECONDS)

    async def _execute_process(self, task: WorkerTaskResp, dirs: TaskDirectories, stdout: Path, stderr: Path) -> runner.Outcome:
        try:
            # output always goes to files (followable live); it becomes the std-log artifact with --terminal
            self.process = await runner.spawn(task.spec.args, self._environment(task, dirs), dirs.work, stdout, stderr)
        except OSError as exc:  # the program does not exist or cannot be executed
            log.warning("task %s: cannot start %s: %s", task.uuid, task.spec.args[0], exc)
            stderr.write_text(f"mito worker: cannot start {task.spec.args[0]!r}: {exc.strerror or exc}\n")
            return runner.Outcome(exit_status=127 if isinstance(exc, FileNotFoundError) else 126, timed_out=False)
        self.state(task, TaskExecState.ExecSpawned)
        if task.uuid in self.cancelled:  # cancelled while it was being started
            asyncio.ensure_future(self.kill_current())
        try:
            return await runner.wait(self.process, task.timeout.total_seconds())
        finally:
            self.process = None

    async def _run(self, task: WorkerTaskResp, dirs: TaskDirectories) -> TaskResultSpec:
        terminal = task.spec.terminal_output
        stdout, stderr = dirs.std_log / "stdout.log", dirs.std_log / "stderr.log"
        self.state(task, TaskExecState.ExecPending)
        finished = asyncio.Event()
        shipping = asyncio.create_task(self._ship_logs(task, {"stdout": stdout, "stderr": stderr}, finished))
        try:
            outcome = await self._execute_process(task, dirs, stdout, stderr)
        finally:
            finished.set()  # the shipper sends what is left and stops
        await shipping
        if self.stopping.is_set():  # killed by our own shutdown: unregistering re-queues it
            raise asyncio.CancelledError()
        cancelled = task.uuid in self.cancelled
        stopped = outcome.timed_out or cancelled
        self.state(task, TaskExecState.ExecTimeout if outcome.timed_out else TaskExecState.ExecFinished)
        await self.client.report(task, "Cancel" if stopped else "Finish")
        self.state(task, TaskExecState.UploadResult)
        await self._upload_outputs(task, dirs, terminal)
        self.state(task, TaskExecState.UploadCancelledResult if stopped else TaskExecState.UploadFinishedResult)
        message = TaskResultMessage.ExecTimeout if outcome.timed_out else TaskResultMessage.UserCancellation if cancelled else None
        if not await self._submit_downstream(task, dirs) and message is None:
            message = TaskResultMessage.SubmitNewTaskFailed
        self.state(task, TaskExecState.UploadResultFinished)
        return TaskResultSpec(exit_status=outcome.exit_status, msg=message)

    async def _upload_outputs(self, task: WorkerTaskResp, dirs: TaskDirectories, terminal: bool) -> None:
        packs: list[tuple[ArtifactContentType, Callable[[], Path]]] = []
        if packing.has_files(dirs.result):
            packs.append((ArtifactContentType.result, lambda: packing.pack_directory(dirs.result, "result", dirs.archives / "result.tar.gz")))
        if packing.has_files(dirs.exec):
            packs.append((ArtifactContentType.exec_log, lambda: packing.pack_directory(dirs.exec, "exec-log", dirs.archives / "exec-log.tar.gz")))
        if terminal:
            packs.append((ArtifactContentType.std_log, lambda: packing.pack_std_logs(dirs.std_log / "stdout.log", dirs.std_log / "stderr.log", dirs.archives / "std-log.tar.gz")))
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
                        raise
                    log.warning("task %s: uploading %s failed (%s); asking for a new URL", task.uuid, content_type.value, exc)

    async def _submit_downstream(self, task: WorkerTaskResp, dirs: TaskDirectories) -> bool:
        """Submit the task the command wrote to ``$MITO_NEW_TASK``, if any. False if it was invalid."""
        try:
            text = dirs.new_task.read_text()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not text.strip():
            return True
        try:
            request = SubmitTaskReq.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            log.warning("task %s: invalid downstream task in MITO_NEW_TASK: %s", task.uuid, exc)
            return False
        try:
            await self.client.report(task, SubmitOp(Submit=request))
        except MitoError as exc:
            if exc.status >= 500 or exc.status == 0:
                raise
            log.warning("task %s: downstream task refused: %s", task.uuid, exc)
            return False
        return True

    async def kill_current(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await runner.stop_group(self.process, grace=runner.KILL_GRACE_SECONDS)


async def register(config: WorkerConfig) -> tuple[HttpSession, RegisterWorkerResp]:
    session = HttpSession(config.coordinator_addr)
    # retain: registering a worker must not log its user out of their other sessions (the reference does)
    user, token = await login_token(session, Credentials(config.credential_path), config.user, config.password, retain=True)
    session.token = token
    request = RegisterWorkerReq(tags=config.tags, labels=config.labels, groups=config.groups, lifetime=config.lifetime)
    registration: RegisterWorkerResp = await session.call("POST", "workers", request, RegisterWorkerResp)
    session.token = registration.token
    log.info("registered as worker %s (user %s)", registration.worker_id, user)
    return session, registration


async def run(config: WorkerConfig) -> int:
    """The ``mito worker`` process: returns its exit code."""
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
    root = cache_dir() / str(registration.worker_id)
    agent = Agent(config, client, root)
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(agent.serve())
    beats = asyncio.create_task(agent.heartbeats())
    states = asyncio.create_task(agent.report_states())
    expires = jwt.decode(registration.token, options={"verify_signature": False})["exp"]
    retire = asyncio.create_task(agent.retire_at(expires, work))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("stopping: the current task (if any) is killed and handed back")
        stopping.set()
        asyncio.ensure_future(agent.kill_current())
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
        for task in (work, beats, states, retire):
            task.cancel()
        await asyncio.gather(work, beats, states, retire, return_exceptions=True)
        await agent.kill_current()
        await client.unregister()
        session.close()
        shutil.rmtree(root, ignore_errors=True)
    return code
