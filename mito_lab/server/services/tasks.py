"""Tasks: submit, read, query, cancel, and their artifacts."""

from __future__ import annotations

import asyncio
import os
import re
import uuid as uuid_module
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import Statements, bulk_insert, chunks
from mito_lab.server.db.models import (
    Artifact,
    Group,
    Task,
    TaskLabel,
    TaskTag,
    User,
    UserGroup,
    Worker,
    detached,
)
from mito_lab.server.errors import ApiError, InvalidRequest, NotFound, PermissionDenied
from mito_lab.server.services.activity import cancel_requested, task_changed, tasks_created
from mito_lab.server.services.cache import Keyed, cache_keys, look_up, share_artifacts
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import (
    charge_storage,
    group_with_role,
    locked_group,
    may_take,
    require_role,
)
from mito_lab.server.services.uploads import (
    ARTIFACTS,
    artifact_object,
    grant_upload,
    no_longer_cached,
    settle_artifacts,
    shared_objects,
)
from mito_lab.server.services.users import CALLER_IS_CURRENT, Caller, current_user
from mito_lab.server.storage import BATCH_DOWNLOAD_URL_LIFETIME, download_url_lifetime
from mito_lab.wire import (
    COMPARISON_PATTERN,
    ArtifactContentType,
    ArtifactDownloadItem,
    ArtifactInfo,
    ArtifactsDownloadResp,
    ArtifactsFilterReq,
    ArtifactsListReq,
    ArtifactSource,
    BatchSubmitItem,
    BatchSubmitReq,
    BatchSubmitResp,
    CancelListResp,
    ChangeTaskReq,
    DeleteArtifactsListResp,
    DeleteArtifactsResp,
    DownloadResp,
    ErrorMsg,
    Role,
    SubmitTaskReq,
    SubmitTaskResp,
    TaskExecState,
    TaskFilter,
    TaskInfo,
    TaskQueryResp,
    TaskResultMessage,
    TasksCancelReq,
    TasksCancelResp,
    TaskSpec,
    TasksQueryReq,
    TasksQueryResp,
    TaskState,
    UploadResp,
)

if TYPE_CHECKING:
    import pyarrow as pa

# A batch at least this large refreshes the database's statistics of the tasks (Database.bulk_loaded).
BULK_LOAD_TASKS = 500
# A batch is committed this many tasks at a time: the submits and heartbeats that come meanwhile
# wait for a chunk (on SQLite, the one writer), not for the whole batch.
BATCH_COMMIT_TASKS = 1_000
CHUNK_PAUSE_SECONDS = 0.001
# Objects younger than this cannot be deleted by non-administrators (reference 2.3, 2.4).
DELETE_GUARD = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


async def set_task_marks(
    session: AsyncSession, task: Task, tags: list[str] | None = None, labels: list[str] | None = None
) -> None:
    """Write a task's tags/labels: the JSON list on the row and the index rows used for matching."""
    if tags is not None:
        task.tags = list(tags)
    if labels is not None:
        task.labels = list(labels)
    fresh = task.id is None
    await session.flush()  # the task needs its id
    for values, model, column in ((tags, TaskTag, "tag"), (labels, TaskLabel, "label")):
        if values is None:
            continue
        if not fresh:
            await session.execute(sa.delete(model).where(model.task_id == task.id))
        if values:
            await session.execute(sa.insert(model), [{"task_id": task.id, column: value} for value in values])


def contains_all(model: type[TaskTag] | type[TaskLabel], values: list[str]) -> sa.ColumnElement[bool]:
    """The task's tags (or labels) include every one of ``values``."""
    column = model.tag if model is TaskTag else model.label  # type: ignore[union-attr]
    matching = (
        sa.select(model.task_id)
        .where(column.in_(values))
        .group_by(model.task_id)
        .having(sa.func.count() == len(values))
    )
    return Task.id.in_(matching)


_COMPARISON = re.compile(COMPARISON_PATTERN)
_OPERATORS: dict[str, Callable[[sa.ColumnElement[int], int], sa.ColumnElement[bool]]] = {
    "=": lambda c, v: c == v, "!=": lambda c, v: c != v, "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v, ">": lambda c, v: c > v, ">=": lambda c, v: c >= v,
}


def compare(column: sa.ColumnElement[int], expression: str) -> sa.ColumnElement[bool]:
    """``"=N"``, ``"N"``, ``"!=N"``, ``"<N"``, ... as a numeric SQL comparison."""
    match = _COMPARISON.match(expression)
    if match is None:
        raise InvalidRequest(f"invalid comparison {expression!r} (use =N, !=N, <N, <=N, >N or >=N)")
    return _OPERATORS[match.group(1) or "="](column, int(match.group(2)))


def task_fields(task: Task, creator: str, group: str) -> dict[str, Any]:
    """A task as the fields of ``TaskInfo`` (validated by the caller, in bulk for listings)."""
    archived = task.archived_at is not None and task.exit_status is not None
    return {
        "uuid": task.uuid, "creator_username": creator, "group_name": group, "task_id": task.task_id,
        "tags": task.tags, "labels": task.labels, "created_at": task.created_at, "updated_at": task.updated_at,
        "state": task.state, "timeout": task.timeout, "priority": task.priority, "spec": task.spec,
        "result": {"exit_status": task.exit_status, "msg": task.result_msg} if archived else None,
        "upstream_task_uuid": task.upstream_task_uuid, "downstream_task_uuid": task.downstream_task_uuid,
        "reporter_uuid": task.reporter_uuid, "attempts": task.attempts, "max_attempts": task.max_attempts,
        "exec_state": task.exec_state, "cancel_requested": task.cancel_requested,
        "started_at": task.started_at, "ended_at": task.ended_at, "usage": usage_of(task), "cached_from": task.cached_from,
    }


USAGE_COLUMNS = {"wall_s": "wall_seconds", "cpu_s": "cpu_seconds", "max_rss": "max_rss", "cores": "cores", "gpu_max_memory": "gpu_max_memory"}
"""``TaskUsage``'s fields and the task columns that keep them."""


def usage_of(task: Any) -> dict[str, Any] | None:
    """The run's cost as its worker reported it, if it did."""
    if task.cpu_seconds is None:
        return None
    return {field: getattr(task, column) for field, column in USAGE_COLUMNS.items()}


def task_info(task: Task, creator: str, group: str) -> TaskInfo:
    return TaskInfo.model_validate(task_fields(task, creator, group))


_INFO_COLUMNS = (Task, User.username, Group.group_name)


def _info_query() -> sa.Select:
    return sa.select(*_INFO_COLUMNS).join(User, User.id == Task.creator_id).join(Group, Group.id == Task.group_id)


async def load_task(session: AsyncSession, task_uuid: uuid_module.UUID) -> tuple[Task, str, str]:
    row = (await session.execute(_info_query().where(Task.uuid == task_uuid))).one_or_none()
    if row is None:
        raise NotFound(f"Task {task_uuid}")
    return row[0], row[1], row[2]


async def task_response(session: AsyncSession, task: Task, creator: str, group: str) -> TaskQueryResp:
    artifacts = (await session.scalars(sa.select(Artifact).where(Artifact.task_uuid == task.uuid))).all()
    return TaskQueryResp(
        info=task_info(task, creator, group),
        artifacts=[
            ArtifactInfo(content_type=a.content_type, size=a.size, created_at=a.created_at, updated_at=a.updated_at)
            for a in sorted(artifacts, key=lambda a: list(ArtifactContentType).index(a.content_type))
        ],
    )


async def artifact_download(
    context: Context, session: AsyncSession, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
) -> DownloadResp:
    artifact = await session.scalar(
        sa.select(Artifact).where(Artifact.task_uuid == task_uuid, Artifact.content_type == content_type)
    )
    if artifact is None:
        raise NotFound(f"Artifact {content_type.value} of task {task_uuid}")
    url = context.store.download_url(context.artifacts_bucket, artifact_object(artifact), download_url_lifetime(artifact.size))
    return DownloadResp(url=url, size=artifact.size)


@dataclass(frozen=True)
class NewTask:
    """A task just inserted, as its answer and its event read it (a batch makes thousands: no ORM
    objects). A new task has not run: the fields after ``state`` are those of any new task, but
    a cache hit's, which is created ended."""

    id: int
    uuid: uuid_module.UUID
    task_id: int
    group_id: int
    state: TaskState
    exec_state: TaskExecState | None = None
    exit_status: int | None = None
    result_msg: TaskResultMessage | None = None
    attempts: int = 0
    cancel_requested: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    archived_at: datetime | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss: int | None = None
    cores: float | None = None
    cached_from: uuid_module.UUID | None = None
    tags: Sequence[str] = ()
    assigned_worker_id: int | None = None  # a worker took it as it was created (``insert_tasks``)

    @classmethod
    def from_row(cls, row: dict[str, Any], row_id: int) -> NewTask:
        """The task as ``insert_tasks`` inserts its row."""
        return cls(row_id, row["uuid"], row["task_id"], row["group_id"], row["state"], exit_status=row.get("exit_status"),
                   attempts=row["attempts"], started_at=row.get("started_at"), ended_at=row.get("ended_at"),
                   archived_at=row.get("archived_at"), cached_from=row.get("cached_from"), tags=row["tags"],
                   assigned_worker_id=row.get("assigned_worker_id"))


_TASKS = Task.__table__
# A group's next task ids, taken by Core: the ORM's bulk UPDATE also looks for the group among
# the session's objects to refresh it, a third of the statement's cost on a single submit.
_GROUPS = Group.__table__
_TAKE_TASK_IDS = (
    sa.update(_GROUPS).where(_GROUPS.c.id == sa.bindparam("group_id"))
    .values(task_count=_GROUPS.c.task_count + sa.bindparam("count")).returning(_GROUPS.c.task_count)
)
# The ids of a group's tasks by their task_id range, off the (group_id, task_id) unique index.
_IDS_BY_TASK_ID = sa.select(_TASKS.c.task_id, _TASKS.c.id).where(
    _TASKS.c.group_id == sa.bindparam("group_id"), _TASKS.c.task_id.between(sa.bindparam("first"), sa.bindparam("last"))
)


# A submit's group, if its caller's token still holds and they may write in it, with its next
# task ids taken: one statement (the submit's latency path), where authenticating, reading the
# group and role, then taking the ids made three.
_CALLER_MAY_WRITE = (_GROUPS.c.group_name == sa.bindparam("name"), CALLER_IS_CURRENT, sa.exists().where(
    UserGroup.group_id == _GROUPS.c.id, UserGroup.user_id == sa.bindparam("caller_id"),
    UserGroup.role.in_(sa.bindparam("roles", expanding=True)),
))
_GROUP_TAKING_IDS = (
    sa.update(_GROUPS).where(*_CALLER_MAY_WRITE)
    .values(task_count=_GROUPS.c.task_count + sa.bindparam("count"))
    .returning(*_GROUPS.c)
)


async def group_taking_ids(session: AsyncSession | Statements, caller: Caller, name: str | None, count: int) -> tuple[Group, int]:
    """The named group (the caller's personal group when no name is given) if the caller may
    submit to it, with ``count`` task ids taken in it: the group, and the last id (see
    ``insert_tasks``)."""
    user = caller.user
    row = (await session.execute(_GROUP_TAKING_IDS, {
        "name": name or user.username, "caller_id": user.id, "caller_signature": caller.signature,
        "roles": Role.Write.and_above(), "count": count,
    })).first()
    if row is None:  # the token no longer holds, no such group, or no role to write in it: says which
        group = await group_with_role(session, await current_user(session, user.username, caller.signature), name, Role.Write)
        return group, await session.scalar(_TAKE_TASK_IDS, {"group_id": group.id, "count": count})
    return detached(Group, row._asdict()), row.task_count


# A single task, taken by the worker ``claimant`` as it is created if that worker may take it
# (the claim's rules, ``may_take``); else created as given (``unclaimed_state``): a submit to
# an idle worker is one statement, not an INSERT and then a claim.
_CLAIMANT = sa.bindparam("claimant", type_=sa.BigInteger)
_CLAIM_COLUMNS = ("state", "assigned_worker_id", "attempts", "started_at")


def _claimed_values(group_id: sa.ColumnElement[Any]) -> dict[str, sa.ColumnElement[Any]]:
    """The columns a claim sets, set as the task of ``group_id`` is created if ``claimant`` may take it."""
    taken = may_take(_CLAIMANT, group_id)
    return {
        "state": sa.case((taken, TaskState.Running.value), else_=sa.bindparam("unclaimed_state", type_=_TASKS.c.state.type)),
        "assigned_worker_id": sa.case((taken, _CLAIMANT)),
        "attempts": sa.case((taken, 1), else_=0),
        "started_at": sa.case((taken, sa.bindparam("claim_moment", type_=_TASKS.c.started_at.type))),
    }


_INSERT_ONE = (
    _TASKS.insert().values(**_claimed_values(sa.bindparam("claim_group", type_=sa.BigInteger)))
    .returning(_TASKS.c.id, *(_TASKS.c[name] for name in _CLAIM_COLUMNS))
)


def _requested_columns(request: SubmitTaskReq, creator_id: int, uuid: uuid_module.UUID, upstream_task_uuid: uuid_module.UUID | None,
                       moment: datetime) -> dict[str, Any]:
    """The columns of a new task that its request and creation give, however it is inserted."""
    return {
        "uuid": uuid, "creator_id": creator_id, "tags": request.tags, "labels": request.labels,
        "timeout": int(request.timeout.total_seconds()), "priority": request.priority,
        "spec": request.task_spec.model_dump(mode="json"), "upstream_task_uuid": upstream_task_uuid,
        "max_attempts": request.max_attempts, "cancel_requested": False, "created_at": moment, "updated_at": moment,
    }


_REQUESTED_COLUMNS = ("uuid", "creator_id", "tags", "labels", "timeout", "priority", "spec", "upstream_task_uuid", "max_attempts",
                      "cancel_requested", "created_at", "updated_at")  # the keys of ``_requested_columns``


def _submit_in_one_statement() -> sa.Select[Any]:
    """On PostgreSQL, a plain submit (no cache key, no other task to check) as one statement that
    commits by itself, where a transaction took four round trips (BEGIN, the group's UPDATE, the
    INSERT, COMMIT): the group's UPDATE of ``_GROUP_TAKING_IDS`` (the caller, their role, the
    task id), then the task's INSERT (taken by ``claimant`` as it is created, as ``_INSERT_ONE``),
    its tags and labels. No row if the UPDATE found nothing."""
    # (the bound values are named new_<column>: SQLAlchemy keeps the columns' own names for itself)
    values = {name: sa.bindparam(f"new_{name}", type_=_TASKS.c[name].type) for name in _REQUESTED_COLUMNS}
    taking = sa.update(_GROUPS).where(*_CALLER_MAY_WRITE).values(
        task_count=_GROUPS.c.task_count + 1, updated_at=values["updated_at"],
    ).returning(_GROUPS.c.id, _GROUPS.c.task_count).cte("taking")
    given = list(values)
    claimed = _claimed_values(taking.c.id)
    row = sa.select(taking.c.id, taking.c.task_count, *values.values(), *claimed.values()).select_from(taking)
    inserted = _TASKS.insert().from_select(["group_id", "task_id", *given, *claimed], row, include_defaults=False).returning(
        _TASKS.c.id, _TASKS.c.group_id, _TASKS.c.task_id, *(_TASKS.c[name] for name in _CLAIM_COLUMNS),
    ).cte("inserted")
    marks = [
        model.__table__.insert().from_select(
            ["task_id", mark], sa.select(inserted.c.id, sa.func.unnest(sa.bindparam(f"{mark}_list", type_=postgresql.ARRAY(sa.String)))),
        ).cte(f"{mark}s")
        for model, mark in ((TaskTag, "tag"), (TaskLabel, "label"))
    ]
    return sa.select(inserted).add_cte(*marks)


_SUBMIT_IN_ONE_STATEMENT = _submit_in_one_statement()


def _one_statement_values(caller: Caller, request: SubmitTaskReq, name: str, uuid: uuid_module.UUID, claimant: int | None) -> dict[str, Any]:
    """The values of ``_SUBMIT_IN_ONE_STATEMENT`` for ``request`` to the group ``name``."""
    moment = now()
    return {
        "name": name, "caller_id": caller.user.id, "caller_signature": caller.signature, "roles": Role.Write.and_above(),
        **{f"new_{column}": value for column, value in _requested_columns(request, caller.user.id, uuid, None, moment).items()},
        "claimant": claimant, "unclaimed_state": TaskState.Ready, "claim_moment": moment, "tag_list": request.tags, "label_list": request.labels,
    }


def new_uuids(count: int) -> list[uuid_module.UUID]:
    """``count`` random (version 4) UUIDs from one read of the system's random source, not one
    each: a batch of 10,000 tasks spent 5% of its submit in ``uuid4``."""
    entropy = os.urandom(16 * count)
    return [uuid_module.UUID(bytes=entropy[at:at + 16], version=4) for at in range(0, 16 * count, 16)]


async def insert_tasks(
    session: AsyncSession | Statements,
    creator_id: int,
    items: Sequence[tuple[Group, SubmitTaskReq]],
    state: TaskState,
    upstream_task_uuid: uuid_module.UUID | None = None,
    keys: Sequence[Keyed | None] = (),
    taken: dict[int, int] | None = None,
    claimant: int | None = None,
) -> list[NewTask]:
    """Create tasks in bulk, in order, in a handful of statements whatever their number: each
    group's ``task_id`` range is taken in one UPDATE; the rows go in one bulk insert without
    RETURNING (on SQLite, RETURNING in parameter order costs one statement per row) and their ids
    are read back by that range, which the UPDATE's lock keeps ours; tags and labels go in one
    bulk insert each. ``keys``: each task's cache key (``services/cache.py``), if any is keyed; a
    task with a source is created as its cache hit, Finished with exit status 0. ``taken``: the
    last of the ids taken already for the items of a group (``group_taking_ids``), by its id.
    ``claimant``: a waiting worker (its id) that takes a single new Ready task as it is created,
    if it may (``Dispatcher.hand_over``)."""
    counts = Counter(group.id for group, _ in items)
    ranges: dict[int, tuple[int, int]] = {}
    for group_id, count in counts.items():
        last = taken[group_id] if taken and group_id in taken else await session.scalar(_TAKE_TASK_IDS, {"group_id": group_id, "count": count})
        ranges[group_id] = ((last or count) - count + 1, last or count)
    next_ids = {group_id: first for group_id, (first, _) in ranges.items()}
    moment = now()
    rows = []
    for (group, request), uuid in zip(items, new_uuids(len(items)), strict=True):
        rows.append({
            **_requested_columns(request, creator_id, uuid, upstream_task_uuid, moment),
            "group_id": group.id, "task_id": next_ids[group.id], "state": state, "attempts": 0,
        })
        next_ids[group.id] += 1
    if any(keys):  # the columns of every row alike (one bulk insert), only in batches that use the cache
        for row, keyed in zip(rows, keys, strict=True):
            source = keyed.source if keyed is not None else None
            ended = moment if source is not None else None
            row.update(
                cache_key=keyed.key if keyed is not None and source is None else None, cached_from=source,
                state=state if source is None else TaskState.Finished, exit_status=None if source is None else 0,
                ended_at=ended, archived_at=ended,
            )
    if not rows:
        return []
    if len(rows) == 1:  # a single submit, the latency path: one INSERT ... RETURNING, no COPY, no read-back
        [row] = rows
        given = {name: value for name, value in row.items() if name not in _CLAIM_COLUMNS}
        inserted = (await session.execute(_INSERT_ONE, {
            **given, "unclaimed_state": row["state"], "claimant": claimant, "claim_group": row["group_id"], "claim_moment": moment,
        })).one()
        row.update(inserted._asdict())
        ids = {(row["group_id"], row["task_id"]): row.pop("id")}
    else:
        await bulk_insert(session, _TASKS, rows)
        ids = {}
        for group_id, (first, last) in ranges.items():
            found = await session.execute(_IDS_BY_TASK_ID, {"group_id": group_id, "first": first, "last": last})
            ids.update(((group_id, task_id), row_id) for task_id, row_id in found)
    tasks = [NewTask.from_row(row, ids[row["group_id"], row["task_id"]]) for row in rows]
    for model, column, mark in ((TaskTag, "tags", "tag"), (TaskLabel, "labels", "label")):
        marks = [{"task_id": task.id, mark: value} for task, row in zip(tasks, rows, strict=True) for value in row[column]]
        await bulk_insert(session, model.__table__, marks)
    return tasks


async def require_readable_references(session: AsyncSession | Statements, user: User, spec: TaskSpec) -> None:
    """A task may fetch artifacts of, and watch, only tasks of groups its creator can read: the
    worker doing it may serve other groups too, and must not carry their data across."""
    referenced = {r.remote_file.Artifact.uuid for r in spec.resources if isinstance(r.remote_file, ArtifactSource)}
    if spec.watch is not None:
        referenced.add(spec.watch[0])
    if not referenced:
        return
    found = (await session.execute(
        sa.select(Task.uuid, Group.id, Group.group_name).join(Task, Task.group_id == Group.id).where(Task.uuid.in_(referenced))
    )).all()
    if spec.watch is not None and spec.watch[0] not in {row.uuid for row in found}:
        # its worker would wait for a state that no task can reach
        raise NotFound(f"Task {spec.watch[0]} (the task to watch)")
    groups = {(row.id, row.group_name) for row in found}
    readable = set((await session.scalars(
        sa.select(UserGroup.group_id).where(UserGroup.user_id == user.id, UserGroup.group_id.in_([g for g, _ in groups]))
    )).all())
    for group_id, name in sorted(groups):
        if group_id not in readable:
            raise PermissionDenied(f"the task refers to a task of group {name}, which you cannot read")


def task_conditions(request: TaskFilter, group: Group) -> list[sa.ColumnElement[bool]]:
    """The SQL of a task filter (query, cancel and artifact batches share it); all filters AND."""
    conditions: list[sa.ColumnElement[bool]] = [Task.group_id == group.id]
    if request.creator_usernames:
        conditions.append(Task.creator_id.in_(sa.select(User.id).where(User.username.in_(request.creator_usernames))))
    if request.states:
        conditions.append(Task.state.in_(request.states))
    if request.tags:
        conditions.append(contains_all(TaskTag, request.tags))
    if request.labels:
        conditions.append(contains_all(TaskLabel, request.labels))
    if request.exit_status is not None:
        conditions.append(compare(Task.exit_status, request.exit_status))
    if request.priority is not None:
        conditions.append(compare(Task.priority, request.priority))
    if request.reporter_uuid is not None:
        conditions.append(Task.reporter_uuid == request.reporter_uuid)
    return conditions


def user_cancellation() -> dict[str, object]:
    """The columns of a task archived because a user cancelled it."""
    moment = now()
    return {
        "state": TaskState.Cancelled,
        "exit_status": 0,
        "result_msg": TaskResultMessage.UserCancellation,
        "archived_at": moment,
        "updated_at": moment,
        "ended_at": moment,
    }


CANCELLABLE = (TaskState.Ready, TaskState.Pending)


HandOver = Callable[[Statements, SubmitTaskReq, int, Callable[[int | None], Awaitable[NewTask | None]]], Awaitable[NewTask | None]]
"""Creates a submitted task (request, group id, the function that creates it for a claimant or
none) for a worker waiting for one, in the submit's transaction (``Dispatcher.hand_over``)."""


class TaskService:
    def __init__(self, context: Context, hand_over: HandOver) -> None:
        self.context = context
        self.hand_over = hand_over


    async def _task_with_role(self, session: AsyncSession, user: User | None, task_uuid: uuid_module.UUID, role: Role) -> Task:
        task, _, _ = await load_task(session, task_uuid)
        await require_role(session, user, await session.get_one(Group, task.group_id), role)
        return task

    # --- submitting and changing ----------------------------------------------------------------

    async def submit(self, caller: Caller, request: SubmitTaskReq) -> SubmitTaskResp:
        user = caller.user
        [keyed] = await cache_keys(self.context, user, [request])
        spec = request.task_spec
        alone = None
        if not self.context.db.is_sqlite and keyed is None and not spec.resources and spec.watch is None:
            alone = await self._submit_in_one_statement(caller, request)
        task = alone or await self._submit_in_transaction(caller, request, keyed)
        if task.assigned_worker_id is not None:  # the worker's answer goes out first: the task starts, then its submitter hears
            await asyncio.sleep(0)
        return SubmitTaskResp(task_id=task.task_id, uuid=task.uuid, cached_from=task.cached_from)

    async def _submit_in_one_statement(self, caller: Caller, request: SubmitTaskReq) -> NewTask | None:
        """A plain submit on PostgreSQL (``_SUBMIT_IN_ONE_STATEMENT``); None if it found no group
        the caller may write in (``_submit_in_transaction`` says why)."""
        name = request.group_name or caller.user.username
        async with self.context.db.statements() as connection:

            async def create(claimant: int | None) -> NewTask | None:
                uuid = new_uuids(1)[0]
                row = (await connection.execute(_SUBMIT_IN_ONE_STATEMENT, _one_statement_values(caller, request, name, uuid, claimant))).first()
                if row is None:
                    return None
                self.context.learn_group(row.group_id, name)
                task = NewTask(row.id, uuid, row.task_id, row.group_id, row.state, attempts=row.attempts, started_at=row.started_at,
                               tags=request.tags, assigned_worker_id=row.assigned_worker_id)
                await tasks_created(self.context, connection, [task])
                return task

            # the waiting worker is chosen by the group's id, which this coordinator knows once
            # it has met the group; the statement checks that the worker may take the task
            group_id = self.context.known_group_id(name)
            return await (create(None) if group_id is None else self.hand_over(connection, request, group_id, create))

    async def _submit_in_transaction(self, caller: Caller, request: SubmitTaskReq, keyed: Keyed | None) -> NewTask:
        user = caller.user
        async with self.context.db.transaction() as session:
            group, last_id = await group_taking_ids(session, caller, request.group_name, 1)
            await require_readable_references(session, user, request.task_spec)
            keys = await look_up(self.context, session, [(group.id, keyed)])

            async def create(claimant: int | None) -> NewTask:
                [task] = await insert_tasks(session, user.id, [(group, request)], TaskState.Ready, keys=keys, taken={group.id: last_id}, claimant=claimant)
                await share_artifacts(session, [(task.uuid, task.cached_from)] if task.cached_from else [])
                await tasks_created(self.context, session, [task])
                return task

            # an idle worker takes it as it is created: no wake-up, no claim of its own
            if keys[0] is not None and keys[0].source is not None:
                return await create(None)
            created = await self.hand_over(session, request, group.id, create)
            assert created is not None  # (``create`` always creates)
            return created

    async def submit_many(self, user: User, request: BatchSubmitReq) -> BatchSubmitResp:
        """Submit in order; an item refused (group, role, references) does not stop the rest. Up
        to BATCH_COMMIT_TASKS tasks go in one transaction, a larger batch in several, one after the
        other: if one fails, the chunks before it stay submitted."""
        refusals: list[ApiError | None] = []
        tasks: list[NewTask] = []
        keys = await cache_keys(self.context, user, request.tasks)
        for start in range(0, len(request.tasks), BATCH_COMMIT_TASKS):
            if start:  # let the requests that came meanwhile reach the writers before the next chunk:
                await asyncio.sleep(CHUNK_PAUSE_SECONDS)  # reading, parsing, authenticating takes them a few turns of the loop
            chunk = request.tasks[start : start + BATCH_COMMIT_TASKS]
            chunk_keys = keys[start : start + BATCH_COMMIT_TASKS]
            async with self.context.db.transaction() as session:
                groups: dict[str | None, Group | ApiError] = {}
                for name in dict.fromkeys(item.group_name for item in chunk):
                    try:
                        groups[name] = await group_with_role(session, user, name, Role.Write)
                    except ApiError as exc:
                        groups[name] = exc
                chunk_refusals = [await self._refusal(session, user, item, groups[item.group_name]) for item in chunk]
                accepted = [(groups[item.group_name], item, keyed)
                            for item, keyed, refusal in zip(chunk, chunk_keys, chunk_refusals, strict=True) if refusal is None]
                looked_up = await look_up(self.context, session, [(group.id, keyed) for group, _, keyed in accepted])  # type: ignore[union-attr]
                created = await insert_tasks(session, user.id, [(group, item) for group, item, _ in accepted], TaskState.Ready, keys=looked_up)  # type: ignore[misc]
                await share_artifacts(session, [(task.uuid, task.cached_from) for task in created if task.cached_from])
                await tasks_created(self.context, session, created)
            refusals += chunk_refusals
            tasks += created
        if len(tasks) >= BULK_LOAD_TASKS:
            self.context.db.bulk_loaded(_TASKS)
        created = iter(tasks)
        results = []
        for refusal in refusals:
            if refusal is not None:
                results.append(BatchSubmitItem(Err=ErrorMsg(msg=refusal.msg)))
            else:
                task = next(created)
                results.append(BatchSubmitItem(Ok=SubmitTaskResp(task_id=task.task_id, uuid=task.uuid, cached_from=task.cached_from)))
        return BatchSubmitResp(results=results)

    @staticmethod
    async def _refusal(session: AsyncSession | Statements, user: User, item: SubmitTaskReq, group: Group | ApiError) -> ApiError | None:
        """Why an item of a batch cannot be submitted (its group, or what it refers to), or ``None``."""
        if isinstance(group, ApiError):
            return group
        try:
            await require_readable_references(session, user, item.task_spec)
        except ApiError as exc:
            return exc
        return None

    async def change(self, user: User, task_uuid: uuid_module.UUID, request: ChangeTaskReq) -> None:
        """Change a task that no worker holds yet; it is matched anew at the next fetch."""
        if request.model_dump(exclude_none=True) == {}:
            raise InvalidRequest("No change specified")
        async with self.context.db.write() as session:
            task = await self._task_with_role(session, user, task_uuid, Role.Write)
            if task.state not in CANCELLABLE:
                raise NotFound(f"Ready task {task_uuid}")
            if request.timeout is not None:
                task.timeout = int(request.timeout.total_seconds())
            if request.priority is not None:
                task.priority = request.priority
            if request.task_spec is not None:
                await require_readable_references(session, user, request.task_spec)
                task.spec = request.task_spec.model_dump(mode="json")
                task.cache_key = None  # its key says what it would have run: it answers no cache lookup
            task.updated_at = now()
            await set_task_marks(session, task, tags=request.tags)
            await task_changed(self.context, session, task)

    async def update_labels(self, user: User, task_uuid: uuid_module.UUID, labels: list[str]) -> None:
        """Labels can be changed at any time, archived tasks included."""
        async with self.context.db.write() as session:
            task = await self._task_with_role(session, user, task_uuid, Role.Write)
            await set_task_marks(session, task, labels=labels)
            await task_changed(self.context, session, task)

    # --- reading --------------------------------------------------------------------------------

    async def get(self, user: User, task_uuid: uuid_module.UUID) -> TaskQueryResp:
        await settle_artifacts(self.context, [task_uuid])
        async with self.context.db.read() as session:
            task, creator, group_name = await load_task(session, task_uuid)
            await require_role(session, user, await session.get_one(Group, task.group_id), Role.Read)
            return await task_response(session, task, creator, group_name)

    async def query(self, user: User, request: TasksQueryReq) -> TasksQueryResp:
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, request.group_name, Role.Read)
            base = _info_query().where(*task_conditions(request, group))
            if request.count:
                total = await session.scalar(sa.select(sa.func.count()).select_from(base.subquery()))
                return TasksQueryResp(count=total or 0, tasks=[], group_name=group.group_name)
            # newest first across active and archived tasks together
            rows = (await session.execute(base.order_by(Task.id.desc()).limit(request.limit).offset(request.offset))).all()
            # validated in one call: pydantic's core loops over the rows much faster than Python
            fields = [task_fields(task, creator, group_name) for task, creator, group_name in rows]
            return TasksQueryResp.model_validate({"count": len(fields), "tasks": fields, "group_name": group.group_name})

    async def query_columns(self, user: User, request: TasksQueryReq) -> AsyncIterator[pa.RecordBatch]:
        """The tasks ``query`` lists, as Arrow record batches (``task_columns``); the group and role
        are checked before the first batch."""
        # pyarrow, and pandas which it loads, add some 70 MB to the coordinator: loaded by the first
        # columnar listing, not at start
        from mito_lab.server.services.task_columns import task_column_batches

        if request.count:
            raise InvalidRequest("count: this route lists tasks as columns; POST /tasks/query counts them")
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, request.group_name, Role.Read)
            async for batch in task_column_batches(session, task_conditions(request, group), request.limit, request.offset):
                yield batch

    # --- cancelling -----------------------------------------------------------------------------

    async def cancel(self, user: User, task_uuid: uuid_module.UUID) -> None:
        """Cancel a task: one no worker holds (Ready, Pending) is archived as UserCancellation at
        once; a Running one is killed by its worker, which is told at once (SPEC 4.3)."""
        async with self.context.db.write() as session:
            task = await self._task_with_role(session, user, task_uuid, Role.Write)
            if task.state == TaskState.Running and not task.cancel_requested:
                task.cancel_requested, task.updated_at = True, now()
                worker_uuid = await session.scalar(sa.select(Worker.worker_id).where(Worker.id == task.assigned_worker_id))
                if worker_uuid is not None:
                    cancel_requested(self.context, session, worker_uuid, task.uuid)
                await task_changed(self.context, session, task)
                return
            if await self._archive_cancelled(session, [Task.id == task.id, Task.state.in_(CANCELLABLE)]) == []:
                raise NotFound(f"Cancellable task {task_uuid} (it has ended or is being cancelled)")

    async def _archive_cancelled(self, session: AsyncSession, conditions: list[sa.ColumnElement[bool]]) -> list[uuid_module.UUID]:
        tasks = (await session.scalars(sa.update(Task).where(*conditions).values(**user_cancellation()).returning(Task))).all()
        for task in tasks:
            await task_changed(self.context, session, task)
        return [task.uuid for task in tasks]

    async def cancel_many(self, user: User, request: TasksCancelReq) -> TasksCancelResp:
        """Cancel the Ready and Pending tasks of a group that match the filter."""
        states = [s for s in (request.states or []) if s in CANCELLABLE] or list(CANCELLABLE)
        async with self.context.db.write() as session:
            group = await group_with_role(session, user, request.group_name, Role.Write)
            conditions = task_conditions(request.model_copy(update={"states": states}), group)
            cancelled = await self._archive_cancelled(session, conditions)
            return TasksCancelResp(cancelled_count=len(cancelled), group_name=group.group_name)

    async def cancel_list(self, user: User, uuids: list[uuid_module.UUID]) -> CancelListResp:
        writable = await self._groups_at_least(user, Role.Write)
        async with self.context.db.write() as session:
            cancelled: set[uuid_module.UUID] = set()
            for chunk in chunks(uuids):
                conditions = [Task.uuid.in_(chunk), Task.state.in_(CANCELLABLE), Task.group_id.in_(writable)]
                cancelled.update(await self._archive_cancelled(session, conditions))
        return CancelListResp(cancelled_count=len(cancelled), failed_uuids=[u for u in uuids if u not in cancelled])

    async def _groups_at_least(self, user: User, role: Role) -> set[int]:
        """The ids of the groups where ``user`` has at least ``role``."""
        async with self.context.db.read() as session:
            rows = await session.scalars(
                sa.select(UserGroup.group_id).where(UserGroup.user_id == user.id, UserGroup.role.in_(role.and_above()))
            )
            return set(rows.all())


    # --- artifacts ------------------------------------------------------------------------------

    async def upload_artifact(
        self, user: User, task_uuid: uuid_module.UUID, content_type: ArtifactContentType, size: int
    ) -> UploadResp:
        """Sign the upload; the artifact is recorded once it arrived whole (``services/uploads.py``)."""
        async with self.context.db.write() as session:
            task = await self._task_with_role(session, user, task_uuid, Role.Write)
            group = await session.get_one(Group, task.group_id)
            return await grant_upload(self.context, await session.connection(), ARTIFACTS, (task.uuid, content_type), group, size, user.id)

    async def download_artifact(
        self, user: User, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
    ) -> DownloadResp:
        await settle_artifacts(self.context, [task_uuid])
        async with self.context.db.read() as session:
            await self._task_with_role(session, user, task_uuid, Role.Read)
            return await artifact_download(self.context, session, task_uuid, content_type)

    def _artifact_links(self, rows: Sequence[Artifact]) -> ArtifactsDownloadResp:
        return ArtifactsDownloadResp(
            downloads=[
                ArtifactDownloadItem(
                    uuid=a.task_uuid,
                    url=self.context.store.download_url(self.context.artifacts_bucket, artifact_object(a), BATCH_DOWNLOAD_URL_LIFETIME),
                    size=a.size,
                )
                for a in rows
            ]
        )

    async def download_artifacts(self, user: User, request: ArtifactsFilterReq) -> ArtifactsDownloadResp:
        """Links (valid a day) to one artifact type of every task matching the filter."""
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, request.group_name, Role.Read)
        await settle_artifacts(self.context, sa.select(Task.uuid).where(Task.group_id == group.id))
        async with self.context.db.read() as session:
            matching = sa.select(Task.uuid).where(*task_conditions(request, group))
            rows = await session.scalars(
                sa.select(Artifact)
                .where(Artifact.task_uuid.in_(matching), Artifact.content_type == request.content_type)
                .order_by(Artifact.id)
            )
            return self._artifact_links(rows.all())

    async def download_artifacts_list(self, user: User, request: ArtifactsListReq) -> ArtifactsDownloadResp:
        """Links for the listed tasks; tasks of groups the caller cannot read are left out."""
        readable = await self._groups_at_least(user, Role.Read)
        for chunk in chunks(request.uuids):
            await settle_artifacts(self.context, chunk)
        async with self.context.db.read() as session:
            found: list[Artifact] = []
            for chunk in chunks(request.uuids):
                tasks = sa.select(Task.uuid).where(Task.uuid.in_(chunk), Task.group_id.in_(readable))
                rows = await session.scalars(
                    sa.select(Artifact).where(Artifact.task_uuid.in_(tasks), Artifact.content_type == request.content_type)
                )
                found.extend(rows.all())
            return self._artifact_links(found)

    async def delete_artifact(
        self, user: User | None, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
    ) -> None:
        """Delete one artifact. ``user=None`` is the administrators' route: any group, no one-hour guard."""
        guarded = user is not None
        async with self.context.db.write() as session:
            task = await self._task_with_role(session, user, task_uuid, Role.Write)
            artifact = await session.scalar(
                sa.select(Artifact).where(Artifact.task_uuid == task.uuid, Artifact.content_type == content_type)
            )
            if artifact is None:
                raise NotFound(f"Artifact {content_type.value} of task {task_uuid}")
            if guarded and artifact.updated_at > now() - DELETE_GUARD:
                raise InvalidRequest("the artifact was updated less than an hour ago and cannot be deleted yet")
            unnamed = await self._drop_artifacts(session, [(artifact, task.group_id)])
        await self._delete_objects(unnamed)

    async def delete_artifacts(self, user: User, request: ArtifactsFilterReq) -> DeleteArtifactsResp:
        async with self.context.db.write() as session:
            group = await group_with_role(session, user, request.group_name, Role.Write)
            matching = sa.select(Task.uuid).where(*task_conditions(request, group))
            rows = (await session.scalars(
                sa.select(Artifact).where(
                    Artifact.task_uuid.in_(matching),
                    Artifact.content_type == request.content_type,
                    Artifact.updated_at <= now() - DELETE_GUARD,
                )
            )).all()
            unnamed = await self._drop_artifacts(session, [(a, group.id) for a in rows])
        await self._delete_objects(unnamed)
        return DeleteArtifactsResp(deleted_count=len(rows))

    async def delete_artifacts_list(self, user: User, request: ArtifactsListReq) -> DeleteArtifactsListResp:
        writable = await self._groups_at_least(user, Role.Write)
        deleted: list[Artifact] = []
        unnamed: list[str] = []
        async with self.context.db.write() as session:
            for chunk in chunks(request.uuids):
                rows = await session.execute(
                    sa.select(Artifact, Task.group_id)
                    .join(Task, Task.uuid == Artifact.task_uuid)
                    .where(
                        Artifact.task_uuid.in_(chunk),
                        Artifact.content_type == request.content_type,
                        Artifact.updated_at <= now() - DELETE_GUARD,
                        Task.group_id.in_(writable),
                    )
                )
                pairs = [(artifact, group_id) for artifact, group_id in rows.all()]
                unnamed += await self._drop_artifacts(session, pairs)
                deleted.extend(artifact for artifact, _ in pairs)
        await self._delete_objects(unnamed)
        gone = {a.task_uuid for a in deleted}
        return DeleteArtifactsListResp(deleted_count=len(deleted), failed_uuids=[u for u in request.uuids if u not in gone])

    async def _drop_artifacts(self, session: AsyncSession, pairs: list[tuple[Artifact, int]]) -> list[str]:
        """Remove artifact rows, their tasks from the cache's sources, and give their groups the
        space of the objects no other artifact names (a cache hit shares its source's); returns
        those objects, to be deleted."""
        if not pairs:
            return []
        await no_longer_cached(session, {artifact.task_uuid for artifact, _ in pairs})
        objects = {artifact_object(artifact): (artifact.size, group_id) for artifact, group_id in pairs}
        shared = await shared_objects(session, objects, besides={artifact.id for artifact, _ in pairs})
        for artifact, _ in pairs:
            await session.delete(artifact)
        await session.flush()  # a later look at the objects' names in this transaction sees them gone
        unnamed = [name for name in objects if name not in shared]
        for name in unnamed:
            size, group_id = objects[name]
            await charge_storage(session, await locked_group(self.context, session, group_id), size, 0)
        return unnamed

    async def _delete_objects(self, names: Sequence[str]) -> None:
        for name in names:  # after the rows are gone: a failure leaves an invisible orphan
            await self.context.store.delete(self.context.artifacts_bucket, name)
