"""Tasks: submit, read, query, cancel, and their artifacts."""

from __future__ import annotations

import re
import uuid as uuid_module
from collections.abc import Callable
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import Artifact, Group, Task, TaskLabel, TaskTag, User
from mito_lab.server.errors import InvalidRequest, NotFound
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import charge_storage, group_by_name, locked_group, require_role
from mito_lab.server.storage import download_url_lifetime
from mito_lab.wire import (
    ArtifactContentType,
    ArtifactInfo,
    DownloadResp,
    Role,
    SubmitTaskReq,
    SubmitTaskResp,
    TaskInfo,
    TaskQueryResp,
    TaskResultMessage,
    TaskResultSpec,
    TaskSpec,
    TasksQueryReq,
    TasksQueryResp,
    TaskState,
    UploadResp,
)


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
    await session.flush()  # the task needs its id
    for values, model, column in ((tags, TaskTag, "tag"), (labels, TaskLabel, "label")):
        if values is None:
            continue
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


_COMPARISON = re.compile(r"^\s*(=|!=|<=|>=|<|>)?\s*(-?\d+)\s*$")
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


def task_info(task: Task, creator: str, group: str, reporter_uuid: uuid_module.UUID | None = None) -> TaskInfo:
    result = None
    if task.archived_at is not None and task.exit_status is not None:
        result = TaskResultSpec(exit_status=task.exit_status, msg=task.result_msg)
    return TaskInfo(
        uuid=task.uuid,
        creator_username=creator,
        group_name=group,
        task_id=task.task_id,
        tags=task.tags,
        labels=task.labels,
        created_at=task.created_at,
        updated_at=task.updated_at,
        state=task.state,
        timeout=task.timeout,
        priority=task.priority,
        spec=TaskSpec.model_validate(task.spec),
        result=result,
        upstream_task_uuid=task.upstream_task_uuid,
        downstream_task_uuid=task.downstream_task_uuid,
        reporter_uuid=task.reporter_uuid,
    )


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


def artifact_key(task_uuid: uuid_module.UUID, content_type: ArtifactContentType) -> str:
    return f"{task_uuid}/{content_type.file_name}"


async def reserve_artifact(
    context: Context, session: AsyncSession, task: Task, content_type: ArtifactContentType, size: int
) -> UploadResp:
    """Record an artifact and charge its group's storage (reference 5.4), then sign the upload."""
    group = await locked_group(context, session, task.group_id)
    existing = await session.scalar(
        sa.select(Artifact).where(Artifact.task_uuid == task.uuid, Artifact.content_type == content_type)
    )
    await charge_storage(session, group, existing.size if existing else 0, size)
    if existing is None:
        session.add(Artifact(task_uuid=task.uuid, content_type=content_type, size=size))
    else:
        existing.size = size
        existing.updated_at = now()
    url = context.store.upload_url(context.artifacts_bucket, artifact_key(task.uuid, content_type), size)
    return UploadResp(exist=existing is not None, url=url)


async def artifact_download(
    context: Context, session: AsyncSession, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
) -> DownloadResp:
    artifact = await session.scalar(
        sa.select(Artifact).where(Artifact.task_uuid == task_uuid, Artifact.content_type == content_type)
    )
    if artifact is None:
        raise NotFound(f"Artifact {content_type.value} of task {task_uuid}")
    url = context.store.download_url(
        context.artifacts_bucket, artifact_key(task_uuid, content_type), download_url_lifetime(artifact.size)
    )
    return DownloadResp(url=url, size=artifact.size)


async def personal_group(session: AsyncSession, user: User, name: str | None) -> Group:
    """The named group, or the caller's personal group when no name is given."""
    return await group_by_name(session, name or user.username)


async def insert_task(
    session: AsyncSession,
    creator_id: int,
    group: Group,
    request: SubmitTaskReq,
    state: TaskState,
    upstream_task_uuid: uuid_module.UUID | None = None,
) -> Task:
    """Create a task with the next per-group ``task_id`` (submits and downstream tasks alike)."""
    task_id = await session.scalar(
        sa.update(Group)
        .where(Group.id == group.id)
        .values(task_count=Group.task_count + 1)
        .returning(Group.task_count)
    )
    task = Task(
        creator_id=creator_id,
        group_id=group.id,
        task_id=task_id,
        state=state,
        timeout=int(request.timeout.total_seconds()),
        priority=request.priority,
        spec=request.task_spec.model_dump(mode="json"),
        upstream_task_uuid=upstream_task_uuid,
    )
    session.add(task)
    await set_task_marks(session, task, request.tags, request.labels)
    return task


class TaskService:
    def __init__(self, context: Context, on_ready: Callable[[], None]) -> None:
        self.context = context
        self._on_ready = on_ready  # wakes long-polling workers

    async def submit(self, user: User, request: SubmitTaskReq) -> SubmitTaskResp:
        async with self.context.db.write() as session:
            group = await personal_group(session, user, request.group_name)
            await require_role(session, user, group, Role.Write)
            task = await insert_task(session, user.id, group, request, TaskState.Ready)
            response = SubmitTaskResp(task_id=task.task_id, uuid=task.uuid)
        self._on_ready()
        return response

    async def get(self, user: User, task_uuid: uuid_module.UUID) -> TaskQueryResp:
        async with self.context.db.read() as session:
            task, creator, group_name = await load_task(session, task_uuid)
            await require_role(session, user, await session.get_one(Group, task.group_id), Role.Read)
            return await task_response(session, task, creator, group_name)

    async def query(self, user: User, request: TasksQueryReq) -> TasksQueryResp:
        async with self.context.db.read() as session:
            group = await personal_group(session, user, request.group_name)
            await require_role(session, user, group, Role.Read)
            conditions: list[sa.ColumnElement[bool]] = [Task.group_id == group.id]
            if request.creator_usernames:
                conditions.append(User.username.in_(request.creator_usernames))
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
            base = _info_query().where(*conditions)
            if request.count:
                total = await session.scalar(sa.select(sa.func.count()).select_from(base.subquery()))
                return TasksQueryResp(count=total or 0, tasks=[], group_name=group.group_name)
            # newest first across active and archived tasks together
            rows = (await session.execute(base.order_by(Task.id.desc()).limit(request.limit).offset(request.offset))).all()
            tasks = [task_info(task, creator, group_name) for task, creator, group_name in rows]
            return TasksQueryResp(count=len(tasks), tasks=tasks, group_name=group.group_name)

    async def cancel(self, user: User, task_uuid: uuid_module.UUID) -> None:
        """Cancel a task no worker holds yet (Ready), archiving it as UserCancellation."""
        async with self.context.db.write() as session:
            task, _, _ = await load_task(session, task_uuid)
            await require_role(session, user, await session.get_one(Group, task.group_id), Role.Write)
            cancelled = await session.execute(
                sa.update(Task)
                .where(Task.id == task.id, Task.state == TaskState.Ready)
                .values(
                    state=TaskState.Cancelled,
                    exit_status=0,
                    result_msg=TaskResultMessage.UserCancellation,
                    archived_at=now(),
                    updated_at=now(),
                )
            )
            if cancelled.rowcount == 0:
                raise NotFound(f"Ready task {task_uuid}")

    async def upload_artifact(
        self, user: User, task_uuid: uuid_module.UUID, content_type: ArtifactContentType, size: int
    ) -> UploadResp:
        async with self.context.db.write() as session:
            task, _, _ = await load_task(session, task_uuid)
            await require_role(session, user, await session.get_one(Group, task.group_id), Role.Write)
            return await reserve_artifact(self.context, session, task, content_type, size)

    async def download_artifact(
        self, user: User, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
    ) -> DownloadResp:
        async with self.context.db.read() as session:
            task, _, _ = await load_task(session, task_uuid)
            await require_role(session, user, await session.get_one(Group, task.group_id), Role.Read)
            return await artifact_download(self.context, session, task_uuid, content_type)

