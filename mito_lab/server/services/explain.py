"""Why a task is where it is (``GET /tasks/{uuid}/why``), from the dispatch rules themselves: a
worker takes a Ready task of a group that gives it Write or Admin, if it has every tag of the
task, is Normal and asks; tasks of higher priority, then older ones, go first (``dispatch``)."""

from __future__ import annotations

import uuid as uuid_module
from collections import defaultdict
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import Group, GroupWorker, Task, User, Worker
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import SERVING_ROLES, require_role, role_in_group
from mito_lab.server.services.tasks import load_task, now
from mito_lab.text import counted, readable_duration
from mito_lab.wire import (
    HEARTBEATS_PER_TIMEOUT,
    Dependency,
    HeldTask,
    Role,
    TaskExecState,
    TaskState,
    TaskWhyResp,
    WorkerFit,
    WorkerState,
    WorkerVerdict,
)

MISSED_HEARTBEATS = 2  # a worker this many heartbeats late is shown as offline (it is dropped later)

_LINKED_WORKERS = (
    sa.select(Worker, GroupWorker.role, User.username)
    .join(GroupWorker, GroupWorker.worker_id == Worker.id)
    .join(User, User.id == Worker.creator_id)
    .where(GroupWorker.group_id == sa.bindparam("group_id"))
    .order_by(Worker.id)
)
_HELD = sa.select(Task.assigned_worker_id, Task.uuid, Task.started_at).where(
    Task.assigned_worker_id.in_(sa.bindparam("workers", expanding=True)), Task.archived_at.is_(None)
).order_by(Task.started_at)
_AHEAD = sa.select(sa.func.count()).where(
    Task.group_id == sa.bindparam("group_id"),
    Task.state == TaskState.Ready,
    sa.or_(Task.priority > sa.bindparam("priority"), sa.and_(Task.priority == sa.bindparam("priority"), Task.id < sa.bindparam("id"))),
)


def _age(moment: datetime | None, at: datetime) -> str:
    return "" if moment is None else readable_duration((at - moment).total_seconds())


def _silent_after(worker: Worker, by_timeout: timedelta) -> timedelta:
    """How late a worker's heartbeat may be before it is shown offline: two of its own heartbeats
    where it said how often it sends them, else as often as the heartbeat timeout needs."""
    if worker.heartbeat_interval is None:
        return by_timeout
    return min(by_timeout, MISSED_HEARTBEATS * timedelta(seconds=worker.heartbeat_interval))


def _verdict(worker: Worker, role: Role, creator: str, task_tags: list[str], held: list[HeldTask], silent_after: timedelta, at: datetime) -> WorkerVerdict:
    missing = sorted(set(task_tags) - set(worker.tags))
    if role not in SERVING_ROLES:
        fit, reason = WorkerFit.ReadOnly, f"the group's role on it is {role.value}: it runs none of the group's tasks"
    elif missing:
        fit, reason = WorkerFit.MissingTags, f"it lacks the task's {'tag' if len(missing) == 1 else 'tags'} {', '.join(missing)}"
    elif worker.state != WorkerState.Normal:
        fit, reason = WorkerFit.ShuttingDown, "it is shutting down: it takes no new task"
    elif at - worker.last_heartbeat > _silent_after(worker, silent_after):
        fit, reason = WorkerFit.Offline, f"no heartbeat for {_age(worker.last_heartbeat, at)}"
    elif held:
        fit = WorkerFit.Busy
        reason = f"it holds {counted(len(held), 'task')} (the oldest {held[0].uuid}, for {_age(held[0].started_at, at)})"
    else:
        fit, reason = WorkerFit.Idle, "it can take the task at its next request"
    return WorkerVerdict(
        worker_id=worker.worker_id, creator_username=creator, fit=fit, reason=reason, missing_tags=missing,
        holding=held, last_heartbeat=worker.last_heartbeat,
    )


async def _dependency(session: AsyncSession, user: User, kind: str, target: uuid_module.UUID, wanted: TaskExecState | None = None) -> Dependency:
    """The task waited for, its state shown only to who may read its group."""
    row = (await session.execute(sa.select(Task.state, Task.exec_state, Task.group_id).where(Task.uuid == target))).first()
    visible = row is not None and await role_in_group(session, user, row.group_id) is not None
    return Dependency(
        kind=kind, uuid=target, wanted=wanted,
        state=row.state if visible else None, exec_state=row.exec_state if visible else None,
    )


def _ready_summary(group: str, ahead: int, verdicts: list[WorkerVerdict]) -> str:
    if not verdicts:
        return f"no worker serves group {group}: start one that does (mito worker -g {group})"
    able = [v for v in verdicts if v.fit not in (WorkerFit.ReadOnly, WorkerFit.MissingTags)]
    if not able:
        return f"no worker serving group {group} can run it: " + "; ".join(f"{v.worker_id} ({v.reason})" for v in verdicts)
    queue = f"{counted(ahead, 'task')} of the group {'goes' if ahead == 1 else 'go'} first" if ahead else "it is next in the group's queue"
    idle = [v for v in able if v.fit is WorkerFit.Idle]
    busy = [v for v in able if v.fit is WorkerFit.Busy]
    if idle:
        return f"{queue}; {counted(len(idle), 'idle worker')} can take it"
    if busy:
        return f"{queue}; the {counted(len(busy), 'worker')} that can run it {'is' if len(busy) == 1 else 'are'} busy"
    return f"{queue}; the workers that could run it are offline or shutting down"


async def explain(context: Context, user: User, task_uuid: uuid_module.UUID) -> TaskWhyResp:
    at = now()
    silent_after = context.config.heartbeat_timeout * MISSED_HEARTBEATS / HEARTBEATS_PER_TIMEOUT
    async with context.db.read() as session:
        task, _, group_name = await load_task(session, task_uuid)
        await require_role(session, user, await session.get_one(Group, task.group_id), Role.Read)
        linked = (await session.execute(_LINKED_WORKERS, {"group_id": task.group_id})).all()
        held: dict[int, list[HeldTask]] = defaultdict(list)
        if linked:
            for row in await session.execute(_HELD, {"workers": [worker.id for worker, _, _ in linked]}):
                held[row.assigned_worker_id].append(HeldTask(uuid=row.uuid, started_at=row.started_at))
        verdicts = [_verdict(worker, role, creator, task.tags, held[worker.id], silent_after, at) for worker, role, creator in linked]
        waiting_for = []
        if task.upstream_task_uuid is not None and task.state == TaskState.Pending:
            waiting_for.append(await _dependency(session, user, "upstream", task.upstream_task_uuid))
        watch = task.spec.get("watch")
        if watch and task.archived_at is None:
            waiting_for.append(await _dependency(session, user, "watch", uuid_module.UUID(watch[0]), TaskExecState(watch[1])))
        ahead = await session.scalar(_AHEAD, {"group_id": task.group_id, "priority": task.priority, "id": task.id}) if task.state == TaskState.Ready else None
        runner = await session.scalar(sa.select(Worker.worker_id).where(Worker.id == task.assigned_worker_id)) if task.assigned_worker_id else None
    if task.state == TaskState.Ready:
        summary = _ready_summary(group_name, ahead or 0, verdicts)
    elif task.state == TaskState.Pending:
        summary = "it waits for its upstream task to commit" + (f" ({waiting_for[0].uuid}: {waiting_for[0].state.value})" if waiting_for and waiting_for[0].state else "")
    elif task.state == TaskState.Running and task.exec_state == TaskExecState.Watch and waiting_for:
        target = waiting_for[-1]
        summary = f"its worker waits for task {target.uuid} to reach {target.wanted.value if target.wanted else ''}"
    elif task.state == TaskState.Running:
        summary = f"worker {runner} runs it, for {_age(task.started_at, at)}" + (f" ({task.exec_state.value})" if task.exec_state else "")
    else:
        summary = f"it has ended: {task.state.value}" + (f", exit status {task.exit_status}" if task.exit_status is not None else "")
        if task.cached_from is not None:
            summary += f", a cache hit of {task.cached_from} (no worker ran it)"
    return TaskWhyResp(uuid=task.uuid, state=task.state, summary=summary, ahead=ahead, waiting_for=waiting_for, workers=verdicts)
