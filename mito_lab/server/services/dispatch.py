"""The hot path of the worker protocol: claiming tasks and recording what became of them.

Both protocol versions go through here. Version 2 (``POST /workers/exchange``) reports on any
number of a worker's tasks and takes up to k new ones in one request and one transaction; the
reference's fetch and its Finish/Cancel/ExecState/Commit reports are the same rules applied to one
task. Statements are SQLAlchemy Core, built once: on this path the ORM's unit of work cost more
than the rules it served.

A claim is one ``UPDATE ... RETURNING`` over candidates read off the dispatch index in its own
order (per group, so PostgreSQL serves it from the index too), guarded by ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL: any number of coordinators may share the database without handing a task
to two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mito_lab.server.db.engine import Statements, after_commit, after_rollback
from mito_lab.server.db.models import ArtifactUpload, GroupWorker, Task, TaskTag, Worker
from mito_lab.server.errors import WorkerGone
from mito_lab.server.events import RECHECK
from mito_lab.server.services.activity import (
    EVENTS,
    EXEC_STATE_TTL_SECONDS,
    RECHECK_SECONDS,
    TASKS_READY,
    task_payload,
)
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import SERVING_ROLES, may_take
from mito_lab.server.services.logs import append as append_logs
from mito_lab.server.services.outputs import confirm_outputs
from mito_lab.server.services.tasks import USAGE_COLUMNS, NewTask, now
from mito_lab.wire import (
    CommitOp,
    ExchangeOp,
    ExchangeReq,
    ExchangeResp,
    ExecStateOp,
    ExecStatesOp,
    LogChunk,
    LogOp,
    ReportRefusal,
    SubmitTaskReq,
    TaskExecState,
    TaskReport,
    TaskResultMessage,
    TaskSpec,
    TaskState,
    WorkerState,
    WorkerTaskResp,
)

log = logging.getLogger(__name__)

IDENTITY_SECONDS = 5.0
"""How long a worker's identity is trusted without an event saying it changed: the bound on
staleness of its tags and state when coordinators share a database without Redis (events do not
cross between them). Its grants are never taken from here alone: a claim checks them as it takes."""
MAX_PROBE = 1024
"""The most queued tasks a claim looks at to size its share: the claim's cost stays flat however
deep the queue is."""


# --- who a worker is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerIdentity:
    """What the coordinator needs of a worker on every request, held in memory."""

    id: int
    worker_id: uuid_module.UUID
    creator_id: int
    tags: tuple[str, ...]
    state: WorkerState
    serving_groups: tuple[int, ...]  # groups whose tasks it may run (role Write or Admin)
    loaded_at: float = field(compare=False)


_WORKER_BY_UUID = sa.select(Worker.id, Worker.creator_id, Worker.tags, Worker.state).where(
    Worker.worker_id == sa.bindparam("worker_uuid")
)
_SERVING_GROUPS = sa.select(GroupWorker.group_id).where(
    GroupWorker.worker_id == sa.bindparam("worker_pk"), GroupWorker.role.in_(SERVING_ROLES)
).order_by(GroupWorker.group_id)


class WorkerIdentities:
    """Workers' identities and grants, read once and dropped by the events that change them
    (registration, tags, groups, state, removal), or after ``IDENTITY_SECONDS``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._known: dict[uuid_module.UUID, WorkerIdentity] = {}
        self._stop = context.events.listen(EVENTS, self._on_event)

    def close(self) -> None:
        self._stop()

    def _on_event(self, event: Any) -> None:
        if event == RECHECK:  # events may have been missed
            self._known.clear()
        elif isinstance(event, dict) and event.get("kind") == "worker" and event.get("event") != "heartbeat":
            self.forget(event.get("worker_id"))

    def forget(self, worker_id: Any) -> None:
        try:
            self._known.pop(uuid_module.UUID(str(worker_id)), None)
        except ValueError:
            pass

    async def get(self, worker_uuid: uuid_module.UUID) -> WorkerIdentity:
        known = self._known.get(worker_uuid)
        if known is not None and time.monotonic() - known.loaded_at < IDENTITY_SECONDS:
            return known
        async with self.context.db.statements() as connection:
            row = (await connection.execute(_WORKER_BY_UUID, {"worker_uuid": worker_uuid})).first()
            if row is None:
                self._known.pop(worker_uuid, None)
                raise WorkerGone(worker_uuid)
            groups = (await connection.scalars(_SERVING_GROUPS, {"worker_pk": row.id})).all()
        identity = WorkerIdentity(
            id=row.id, worker_id=worker_uuid, creator_id=row.creator_id, tags=tuple(row.tags), state=row.state,
            serving_groups=tuple(groups), loaded_at=time.monotonic(),
        )
        self._known[worker_uuid] = identity
        return identity


# --- a task as the hot path sees it ----------------------------------------------------------------


@dataclass
class TaskRow:
    """The columns of a task that the protocol's rules read and write (and its events show)."""

    id: int
    uuid: uuid_module.UUID
    group_id: int
    state: TaskState
    exec_state: TaskExecState | None
    exit_status: int | None
    result_msg: Any
    attempts: int
    cancel_requested: bool
    started_at: datetime | None
    ended_at: datetime | None
    archived_at: datetime | None
    downstream_task_uuid: uuid_module.UUID | None
    assigned_worker_id: int | None
    reporter_uuid: uuid_module.UUID | None = None
    updated_at: datetime | None = None
    uploading: bool = False  # an output's upload URL was handed out, the upload not yet confirmed
    # the run's cost, set by its commit (written, never read: null until then)
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss: int | None = None
    cores: float | None = None
    gpu_max_memory: int | None = None


_NOT_READ = ("reporter_uuid", "updated_at", "uploading", *USAGE_COLUMNS.values())
_ROW_COLUMNS = [Task.__table__.c[f.name] for f in fields(TaskRow) if f.name not in _NOT_READ]
_ROW_NAMES = tuple(column.name for column in _ROW_COLUMNS)  # a claim's row has more: a TaskRow takes these
_EXEC_STATE_CODES = {state.value: state.code for state in TaskExecState}  # an event's exec_state -> the reference's key
_WRITTEN = ("state", "exec_state", "exit_status", "result_msg", "attempts", "started_at", "ended_at", "archived_at",
            "assigned_worker_id", "reporter_uuid", "updated_at", *USAGE_COLUMNS.values())
_tasks = Task.__table__
# the worker's own grants (a user's upload is settled on its own): what ``confirm_outputs`` settles
_UPLOADING = sa.exists().where(ArtifactUpload.task_uuid == _tasks.c.uuid, ArtifactUpload.uploader_id.is_(None)).label("uploading")
_REPORTED = sa.select(*_ROW_COLUMNS, _UPLOADING).where(
    _tasks.c.id.in_(sa.bindparam("ids", expanding=True)),
    _tasks.c.assigned_worker_id == sa.bindparam("worker_pk"),
    _tasks.c.archived_at.is_(None),
)
_WRITE_BACK = (
    _tasks.update()
    .where(_tasks.c.id == sa.bindparam("row_id"))
    .values({name: sa.bindparam(f"new_{name}") for name in _WRITTEN})
)
_RELEASE_DOWNSTREAM = (
    _tasks.update()
    .where(_tasks.c.uuid.in_(sa.bindparam("uuids", expanding=True)), _tasks.c.state == TaskState.Pending)
    .values(state=TaskState.Ready, updated_at=sa.bindparam("moment"))
    .returning(*_ROW_COLUMNS)
)
_UNDELIVERED = sa.select(*_ROW_COLUMNS, _tasks.c.timeout, _tasks.c.upstream_task_uuid, _tasks.c.spec).where(
    _tasks.c.assigned_worker_id == sa.bindparam("worker_pk"),
    _tasks.c.archived_at.is_(None),
    _tasks.c.exec_state.is_(None),
    _tasks.c.id.not_in(sa.bindparam("holding", expanding=True)),
).order_by(_tasks.c.priority.desc(), _tasks.c.id)
_STILL_HOLDING = sa.select(_tasks.c.id).where(
    _tasks.c.assigned_worker_id == sa.bindparam("worker_pk"), _tasks.c.archived_at.is_(None)
).limit(1)


def _candidates(groups: int) -> sa.Select:
    """The ids of the best Ready tasks in ``groups`` groups that a worker with the given tags may
    run, best first. One branch per group, each read off the dispatch index in order and cut at
    ``limit``, so neither SQLite nor PostgreSQL sorts the whole queue."""
    branches = []
    for index in range(groups):
        foreign_tag = sa.exists().where(
            TaskTag.task_id == _tasks.c.id, TaskTag.tag.not_in(sa.bindparam("tags", expanding=True))
        )
        branch = (
            sa.select(_tasks.c.id, _tasks.c.priority)
            .where(_tasks.c.state == TaskState.Ready, _tasks.c.group_id == sa.bindparam(f"group_{index}"), ~foreign_tag)
            .order_by(_tasks.c.priority.desc(), _tasks.c.id)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .subquery(f"g{index}")
        )
        branches.append(sa.select(branch.c.id, branch.c.priority))
    union = (branches[0] if groups == 1 else sa.union_all(*branches)).subquery("candidates")
    return sa.select(union.c.id).order_by(union.c.priority.desc(), union.c.id).limit(sa.bindparam("limit", type_=sa.Integer))


def _claim(for_update: bool) -> sa.Update:
    """Take up to ``take`` of the candidates that are still Ready, for a worker still Normal and
    still serving each task's group. ``for_update``: PostgreSQL (row locks); else SQLite."""
    # SQLite would read ``state = ?`` off the dispatch index, every Ready task (a claim took twice
    # as long with 20,000 queued), instead of the few candidates by rowid: there the state and
    # claimant are compared as ``+column``, SQLite's way to keep a term off the indexes.
    state, claimant = (_tasks.c.state, _tasks.c.assigned_worker_id) if for_update else (
        sa.literal_column("+tasks.state", _tasks.c.state.type), sa.literal_column("+tasks.assigned_worker_id", _tasks.c.assigned_worker_id.type),
    )
    chosen = (
        sa.select(_tasks.c.id)
        .where(_tasks.c.id.in_(sa.bindparam("candidates", expanding=True)), state == TaskState.Ready)
        .order_by(_tasks.c.priority.desc(), _tasks.c.id)
        .limit(sa.bindparam("take", type_=sa.Integer))
    )
    taken: sa.ScalarSelect[Any] | sa.Select[Any] = chosen.scalar_subquery()
    if for_update:
        # evaluated once (a materialized CTE): a plan that re-ran a SKIP LOCKED subquery per row
        # would see other rows each time and take more than ``take``
        taken = sa.select(chosen.with_for_update(skip_locked=True).cte("chosen").prefix_with("MATERIALIZED").c.id)
    # state and claimant checked again on the row the UPDATE writes: on PostgreSQL a row another
    # transaction claimed meanwhile is re-evaluated against them (and skipped)
    unclaimed = (state == TaskState.Ready, claimant.is_(None))
    return (
        _tasks.update()
        .where(_tasks.c.id.in_(taken), *unclaimed, may_take(sa.bindparam("worker_pk"), _tasks.c.group_id))
        .values(
            state=TaskState.Running, assigned_worker_id=sa.bindparam("worker_pk"), attempts=_tasks.c.attempts + 1,
            exec_state=None, ended_at=None, started_at=sa.bindparam("moment"), updated_at=sa.bindparam("moment"),
        )
        .returning(*_ROW_COLUMNS, _tasks.c.priority, _tasks.c.timeout, _tasks.c.upstream_task_uuid, _tasks.c.spec)
    )


def _delivery(row: Any) -> WorkerTaskResp:
    return WorkerTaskResp(
        id=row.id, uuid=row.uuid, timeout=timedelta(seconds=row.timeout),
        upstream_task_uuid=row.upstream_task_uuid, spec=TaskSpec.model_validate(row.spec),
    )


class Refused(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


# --- the rules ----------------------------------------------------------------------------------


def apply_op(task: TaskRow, op: ExchangeOp, worker: WorkerIdentity, moment: datetime, changed: Callable[[TaskRow], None]) -> None:
    """One report op on a task (reference 2.6), calling ``changed`` after each state it passes
    through (an event per exec state). Raises ``Refused`` if the op does not fit the task. A
    ``Log`` changes nothing of the task: its chunk is kept apart (``logs.append``)."""
    # the models first: comparing one of them with a string goes through pydantic's __eq__
    if isinstance(op, LogOp):
        return
    if isinstance(op, ExecStateOp | ExecStatesOp):
        for state in op.ExecStates if isinstance(op, ExecStatesOp) else [op.ExecState]:
            task.exec_state = state
            changed(task)
    elif isinstance(op, CommitOp):
        if task.state not in (TaskState.Finished, TaskState.Cancelled):
            raise Refused(400, "Task can not be marked as done")
        task.exit_status, task.result_msg = op.Commit.exit_status, op.Commit.msg
        if op.Commit.usage is not None:
            for name, column in USAGE_COLUMNS.items():
                setattr(task, column, getattr(op.Commit.usage, name))
        task.reporter_uuid = worker.worker_id
        task.exec_state, task.archived_at = TaskExecState.TaskCommitted, moment
        changed(task)
    elif op == "Finish" or op == "Cancel":
        if task.state == TaskState.Running:  # a repeated Finish/Cancel changes nothing
            task.state = TaskState.Finished if op == "Finish" else TaskState.Cancelled
            task.ended_at = moment
            changed(task)
    elif op == "Release":
        if task.state != TaskState.Running or task.exec_state is not None:
            raise Refused(400, "Task has started: it cannot be released")
        task.state, task.assigned_worker_id, task.started_at = TaskState.Ready, None, None
        task.attempts -= 1  # it never ran: the attempt does not count
        changed(task)


def end_refused(task: TaskRow, moment: datetime, changed: Callable[[TaskRow], None]) -> None:
    """The task whose report was refused ends here: its worker drops it, so no one would end it."""
    if task.state == TaskState.Running:
        task.state, task.ended_at = TaskState.Cancelled, moment
    task.exit_status, task.result_msg, task.archived_at = 0, TaskResultMessage.ReportRefused, moment
    changed(task)


@dataclass(eq=False)
class _Waiter:
    """A worker long-polling this coordinator for tasks."""

    worker: WorkerIdentity
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    offered: list[int] = field(default_factory=list)  # ids of new tasks handed to it to claim
    delivered: list[WorkerTaskResp] = field(default_factory=list)  # tasks claimed for it (``hand_over``)
    left: bool = False  # it answered its worker

    def can_run(self, group_id: int, tags: Iterable[str]) -> bool:
        return self.worker.state == WorkerState.Normal and group_id in self.worker.serving_groups and set(tags) <= set(self.worker.tags)


class Dispatcher:
    def __init__(self, context: Context, retire: Callable[[WorkerIdentity], Awaitable[None]]) -> None:
        """``retire`` removes a gracefully stopping worker once its last task is committed."""
        self.context = context
        self.retire = retire
        self.identities = WorkerIdentities(context)
        self._waiters: list[_Waiter] = []  # longest waiting first
        self._releasing: set[asyncio.Task[None]] = set()
        self._stop_listening = context.events.listen(TASKS_READY, self._on_ready)
        self._candidates: dict[int, sa.Select] = {}
        self._claim = _claim(for_update=not context.db.is_sqlite)
        # concurrent reports on one task (exec states racing an outcome) wait for each other
        self._reported = _REPORTED if context.db.is_sqlite else _REPORTED.with_for_update()

    @property
    def waiting(self) -> int:
        """Workers long-polling this coordinator for tasks right now."""
        return len(self._waiters)

    def close(self) -> None:
        self._stop_listening()
        self.identities.close()

    # --- waiting workers ------------------------------------------------------------------------

    def _on_ready(self, event: Any) -> None:
        """Tasks became Ready. New tasks that come offered go each to the longest-waiting worker
        that can run them, which claims it by id; anything else wakes every waiting worker to
        look (``announce_ready``)."""
        offer = event.get("offer") if isinstance(event, dict) else None
        if not offer:
            self._wake_all()
            return
        for task_id, group_id, tags in offer:
            taker = self._longest_waiting(group_id, tags)
            if taker is not None:  # else no worker here can: another coordinator's may
                taker.offered.append(task_id)
                taker.wake.set()

    def _longest_waiting(self, group_id: int, tags: Iterable[str]) -> _Waiter | None:
        """The worker waiting longest, with no task offered yet, that can run a task of this group
        and tags."""
        return next((waiter for waiter in self._waiters if not waiter.offered and waiter.can_run(group_id, tags)), None)

    def _wake_all(self) -> None:
        for waiter in self._waiters:
            waiter.wake.set()

    # --- one transaction: reports, then claims ----------------------------------------------------

    async def exchange(self, worker: WorkerIdentity, request: ExchangeReq, wait: float = 0, gone: Callable[[], bool] = lambda: False) -> ExchangeResp:
        """Apply the reports and take up to ``want`` tasks; if there was nothing to report and no
        task to take, wait up to ``wait`` seconds for one."""
        if request.reports or request.want == 0 or wait <= 0:
            return await self._unless_gone(worker, await self._exchange_once(worker, request), gone)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        waiter = _Waiter(worker)
        self._waiters.append(waiter)  # before the first look: nothing announced meanwhile is missed
        current = request  # the first look also hands over what a lost answer took (``holding``)
        try:
            while not self.context.closing and not gone():
                if waiter.delivered:
                    delivered, waiter.delivered = waiter.delivered, []
                    return await self._unless_gone(worker, ExchangeResp(tasks=delivered), gone)
                offered, waiter.offered = waiter.offered, []
                waiter.wake.clear()
                answer = await self._unless_gone(worker, await self._exchange_once(worker, current, offered), gone)
                if offered and not answer.tasks:  # it may no longer take them (a grant taken away): the others look
                    self._wake_all()
                remaining = deadline - loop.time()
                if answer.tasks or remaining <= 0:
                    return answer
                current = ExchangeReq(want=request.want)
                # (not ``wait_for``: its task around the wait costs two more turns of the loop
                # before a handed-over task is answered, and the submitter's answer would go first)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, RECHECK_SECONDS)):
                        await waiter.wake.wait()
            return ExchangeResp()
        finally:
            waiter.left = True
            if waiter in self._waiters:  # (not while a submit hands it a task)
                self._waiters.remove(waiter)
            if waiter.offered:  # offered as it left: the others look for them
                self._wake_all()
            if waiter.delivered:  # handed a task as it answered with others: it goes back
                await self.release(worker, [task.id for task in waiter.delivered])

    async def hand_over(
        self, connection: Statements, request: SubmitTaskReq, group_id: int, create: Callable[[int | None], Awaitable[NewTask | None]],
    ) -> NewTask | None:
        """In the transaction of a submit (or its one statement): ``create`` the task, for the
        longest-waiting worker here that can run it to take (the claim's rules apply as it is
        created: ``insert_tasks``); the worker gets it once the transaction commits, with no claim
        of its own. The worker is kept for it meanwhile (no other task is handed or offered to
        it), and put back if the task is not its (or none was created: ``create`` answered None)
        or the transaction does not commit."""
        waiter = self._longest_waiting(group_id, request.tags)
        if waiter is None:
            return await create(None)
        self._waiters.remove(waiter)

        def put_back() -> None:
            if not waiter.left:
                self._waiters.insert(0, waiter)  # it had waited longest
                waiter.wake.set()  # to look again

        try:
            task = await create(waiter.worker.id)
            if task is None or task.assigned_worker_id != waiter.worker.id:  # its grant or state changed since it began to wait
                put_back()
                return task
            group_names = {group_id: await self.context.group_name(connection, group_id)}
        except BaseException:
            put_back()
            raise
        delivery = WorkerTaskResp(id=task.id, uuid=task.uuid, timeout=request.timeout, upstream_task_uuid=None, spec=request.task_spec)
        taken = (task, {**_event_fields(task), "worker": str(waiter.worker.worker_id)})

        def deliver() -> None:
            if waiter.left:  # it answered meanwhile (a deadline, a hang-up): the task goes back
                self._release_later(waiter.worker, [delivery.id])
            else:
                waiter.delivered.append(delivery)
                waiter.wake.set()
            self._publish([taken], group_names)

        # first, and the worker woken before any event is published: its answer is written
        # before the event streams' (the task starts sooner, and they show it the sooner too)
        after_commit(connection, deliver, first=True)
        after_rollback(connection, put_back)
        return task

    async def _unless_gone(self, worker: WorkerIdentity, answer: ExchangeResp, gone: Callable[[], bool]) -> ExchangeResp:
        """The worker hung up while we claimed: put the tasks back, they never reached it."""
        if answer.tasks and gone():
            await self.release(worker, [task.id for task in answer.tasks])
            answer.tasks = []
        return answer

    async def _exchange_once(self, worker: WorkerIdentity, request: ExchangeReq, offered: list[int] | None = None) -> ExchangeResp:
        moment = now()
        events: list[tuple[TaskRow, dict[str, Any]]] = []
        answer = ExchangeResp()
        retiring = False
        # reports read their tasks locked, then write them back: a transaction. A claim alone is
        # one statement that re-checks what it takes as it takes it.
        async with self.context.db.transaction() if request.reports else self.context.db.statements() as connection:
            if request.reports:
                answer.refused, retiring = await self._apply(connection, worker, request.reports, moment, events)
            if request.holding is not None:
                answer.tasks = await self._undelivered(connection, worker, request.holding)
            if request.want > len(answer.tasks):
                answer.tasks += await self._take(connection, worker, request.want - len(answer.tasks), moment, events, offered)
            group_names = {row.group_id: await self.context.group_name(connection, row.group_id) for row, _ in events}  # type: ignore[arg-type]
        self._publish(events, group_names)
        if retiring:
            await self.retire(worker)
        return answer

    async def _apply(
        self, connection: Statements, worker: WorkerIdentity, reports: list[TaskReport], moment: datetime,
        events: list[tuple[TaskRow, dict[str, Any]]],
    ) -> tuple[list[ReportRefusal], bool]:
        """Apply each report (all its ops or none); the refusals, and whether a gracefully stopping
        worker has just committed its last task."""
        rows = await connection.execute(self._reported, {"ids": [r.id for r in reports], "worker_pk": worker.id})
        tasks = {row.id: TaskRow(**row._asdict()) for row in rows}
        refused, written, committed = [], [], []
        output: list[tuple[TaskRow, LogChunk]] = []
        for report in reports:
            task = tasks.get(report.id)
            if task is None:
                refused.append(ReportRefusal(id=report.id, status=404, msg=f"Task {report.id} not found"))
                continue
            chunks = [(task, op.Log) for op in report.ops if isinstance(op, LogOp)]
            if len(chunks) == len(report.ops):  # live output alone: the task itself is as it was
                output += chunks
                continue
            updated = TaskRow(**task.__dict__)
            seen: list[tuple[TaskRow, dict[str, Any]]] = []
            try:
                for op in report.ops:
                    apply_op(updated, op, worker, moment, lambda t: seen.append((t, _event_fields(t))))
            except Refused as refusal:
                if op == "Release":  # a retried release: the task may be running here again since
                    refused.append(ReportRefusal(id=report.id, status=refusal.status, msg=refusal.msg))
                    continue
                refused.append(ReportRefusal(id=report.id, status=refusal.status, msg=f"{refusal.msg}: the task ends {TaskResultMessage.ReportRefused.value}"))
                log.warning("task %s ends: worker %s reported %s, refused: %s", task.uuid, worker.worker_id, op, refusal.msg)
                updated, seen = TaskRow(**task.__dict__), []  # none of the report's ops apply
                end_refused(updated, moment, lambda t: seen.append((t, _event_fields(t))))
            else:
                output += chunks
            updated.updated_at = moment
            tasks[report.id] = updated  # a second report on the same task builds on the first
            written.append(updated)
            events.extend(seen)
            if updated.archived_at is not None:
                committed.append(updated)
        uploaded = [task.uuid for task in committed if task.uploading]
        if uploaded:  # outputs are recorded once the store has them whole
            lost = await confirm_outputs(self.context, connection, uploaded)
            for task in committed:
                if task.uuid in lost and task.result_msg is None:
                    task.result_msg = TaskResultMessage.OutputsLost
            for task, payload in events:
                if task.uuid in lost and payload["archived"]:
                    payload["msg"] = task.result_msg.value if task.result_msg else None
        await append_logs(self.context, connection, output)
        if written:
            latest = {task.id: task for task in written}
            await connection.execute(
                _WRITE_BACK, [{"row_id": t.id, **{f"new_{name}": getattr(t, name) for name in _WRITTEN}} for t in latest.values()]
            )
        downstream = [t.downstream_task_uuid for t in committed if t.downstream_task_uuid is not None]
        if downstream:  # chained tasks become Ready when their upstream commits
            for row in await connection.execute(_RELEASE_DOWNSTREAM, {"uuids": downstream, "moment": moment}):
                released = TaskRow(**row._asdict())
                events.append((released, _event_fields(released)))
        retiring = False
        if committed and worker.state == WorkerState.GracefulShutdown:  # it goes at its last commit (reference 2.6)
            retiring = await connection.scalar(_STILL_HOLDING, {"worker_pk": worker.id}) is None
        return refused, retiring

    async def _undelivered(self, connection: Statements, worker: WorkerIdentity, holding: list[int]) -> list[WorkerTaskResp]:
        """Tasks assigned to the worker that it never received (an answer lost with a coordinator
        or a connection): hand them over again, without counting a new attempt."""
        rows = (await connection.execute(_UNDELIVERED, {"worker_pk": worker.id, "holding": holding})).all()
        for row in rows:
            log.warning("task %s: handing it to worker %s again (the first answer was lost)", row.uuid, worker.worker_id)
        return [_delivery(row) for row in rows]

    def _share(self, found: int, want: int) -> int:
        """How many of ``found`` queued tasks one worker takes: all it wants while the queue is deep,
        one when it is short, so tasks never sit on one worker while another idles."""
        return max(1, min(want, found // (2 * (self.waiting + 1))))

    async def _take(
        self, connection: Statements, worker: WorkerIdentity, want: int, moment: datetime,
        events: list[tuple[TaskRow, dict[str, Any]]], offered: list[int] | None = None,
    ) -> list[WorkerTaskResp]:
        """Claim up to ``want`` tasks: those ``offered`` (new, handed to this worker) by id if it
        still can; else the best it may run, read off the dispatch index."""
        if worker.state != WorkerState.Normal or not worker.serving_groups:
            return []
        rows: Sequence[Any] = []
        if offered:
            rows = await self._claim_among(connection, worker, offered, min(want, len(offered)), moment)
        if not rows:  # nothing offered, or taken meanwhile by another worker
            groups = len(worker.serving_groups)
            if groups not in self._candidates:
                self._candidates[groups] = _candidates(groups)
            probe = min(MAX_PROBE, 2 * want * (self.waiting + 1))
            found = (await connection.scalars(self._candidates[groups], {
                "tags": list(worker.tags), "limit": probe, **{f"group_{i}": g for i, g in enumerate(worker.serving_groups)},
            })).all()
            if not found:
                return []
            rows = await self._claim_among(connection, worker, found, self._share(len(found), want), moment)
        rows = sorted(rows, key=lambda row: (-row.priority, row.id))
        worker_uuid = str(worker.worker_id)
        for row in rows:
            task = TaskRow(**{name: getattr(row, name) for name in _ROW_NAMES})
            events.append((task, {**_event_fields(task), "worker": worker_uuid}))
        return [_delivery(row) for row in rows]

    async def _claim_among(self, connection: Statements, worker: WorkerIdentity, candidates: Sequence[int], take: int, moment: datetime) -> Sequence[Any]:
        return (await connection.execute(self._claim, {
            "candidates": list(candidates), "take": take, "worker_pk": worker.id, "moment": moment,
        })).all()

    def _release_later(self, worker: WorkerIdentity, ids: list[int]) -> None:
        def done(task: asyncio.Task[None]) -> None:
            self._releasing.discard(task)
            if not task.cancelled() and task.exception() is not None:  # the worker's next exchange hands them over again (``holding``)
                log.error("handing back tasks %s of worker %s failed", ids, worker.worker_id, exc_info=task.exception())

        releasing = asyncio.create_task(self.release(worker, ids))
        self._releasing.add(releasing)
        releasing.add_done_callback(done)

    async def release(self, worker: WorkerIdentity, ids: Iterable[int]) -> None:
        """Hand back tasks claimed for a worker that never received them."""
        reports = [TaskReport(id=task_id, ops=["Release"]) for task_id in ids]
        await self._exchange_once(worker, ExchangeReq(reports=reports))

    # --- events --------------------------------------------------------------------------------

    def _publish(self, events: Sequence[tuple[TaskRow | NewTask, dict[str, Any]]], group_names: dict[int, str]) -> None:
        """After the commit, in one batch: an event per state a task passed through (and the
        reference's ``task:<uuid>`` keys), and one wake-up for the waiting fetches if any task
        became Ready."""
        messages: list[tuple[str, Any]] = []
        raw: list[tuple[str, Any, int]] = []
        for task, payload in events:
            payload["group"] = group_names[task.group_id]
            messages.append((EVENTS, payload))
            if payload["exec_state"] is not None:
                raw.append((f"task:{task.uuid}", _EXEC_STATE_CODES[payload["exec_state"]], EXEC_STATE_TTL_SECONDS))
        if any(payload["state"] == TaskState.Ready.value and not payload["archived"] for _, payload in events):
            messages.append((TASKS_READY, {}))
        if messages:
            self.context.events.publish_many(messages, raw)


def _event_fields(task: TaskRow | NewTask) -> dict[str, Any]:
    """The task's event as of now (its group's name is filled in at publication)."""
    return task_payload(task, "")  # type: ignore[arg-type]

