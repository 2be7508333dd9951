"""Live output: the newest part of each running task's stdout and stderr, kept in the database
(so any coordinator can serve it) in a bounded window, and followed by clients with long polls.
The complete output stays what it always was: the ``std-log`` artifact of a ``--terminal`` task."""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from mito_lab.server.db.engine import Statements, after_commit
from mito_lab.server.db.models import Group, Task, TaskLog, User
from mito_lab.server.services.activity import EVENTS, long_poll
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import require_role
from mito_lab.server.services.tasks import load_task, now
from mito_lab.wire import LogChunk, LogStream, Role, TaskLogResp

WINDOW_BYTES = 1 << 20  # per stream
RETENTION = timedelta(hours=1)  # after the task ends
MAX_ANSWER_CHUNKS = 16  # up to 1 MiB per answer


class LoggedTask(Protocol):
    id: int
    uuid: uuid_module.UUID
    group_id: int


_logs = TaskLog.__table__
_ENDS = (
    sa.select(_logs.c.task_id, _logs.c.stream, sa.func.max(_logs.c.offset + _logs.c.length).label("end"))
    .where(_logs.c.task_id.in_(sa.bindparam("task_ids", expanding=True)))
    .group_by(_logs.c.task_id, _logs.c.stream)
)
_KEEP = _logs.insert()
_OUT_OF_WINDOW = _logs.delete().where(
    _logs.c.task_id == sa.bindparam("of_task"), _logs.c.stream == sa.bindparam("of_stream"),
    _logs.c.offset + _logs.c.length <= sa.bindparam("below"),
)


async def append(context: Context, connection: Statements, chunks: Sequence[tuple[LoggedTask, LogChunk]]) -> None:
    """Keep the chunks workers shipped, in order (a retried one we already have is ignored), drop
    what falls out of each stream's window, and tell followers once the transaction commits: the
    chunks of any number of tasks in three statements."""
    if not chunks:
        return
    found = await connection.execute(_ENDS, {"task_ids": sorted({task.id for task, _ in chunks})})
    ends = {(row.task_id, row.stream): row.end for row in found}
    kept: list[dict[str, Any]] = []
    trimmed: list[dict[str, Any]] = []
    events: list[tuple[str, Any]] = []
    for task, chunk in chunks:
        if chunk.offset < ends.get((task.id, chunk.stream), 0) or not chunk.length:
            continue
        new_end = ends[(task.id, chunk.stream)] = chunk.offset + chunk.length
        kept.append({"task_id": task.id, "stream": chunk.stream, "offset": chunk.offset, "length": chunk.length, "data": chunk.data})
        if new_end > WINDOW_BYTES:
            trimmed.append({"of_task": task.id, "of_stream": chunk.stream, "below": new_end - WINDOW_BYTES})
        group = await context.group_name(connection, task.group_id)
        events.append((EVENTS, {"kind": "log", "uuid": str(task.uuid), "group": group, "stream": chunk.stream, "next": new_end}))
    if kept:
        await connection.execute(_KEEP, kept)
    if trimmed:
        await connection.execute(_OUT_OF_WINDOW, trimmed)
    if events:
        after_commit(connection, lambda: context.events.publish_many(events))


class LogService:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def read(self, user: User, task_uuid: uuid_module.UUID, stream: LogStream, offset: int, wait: float) -> TaskLogResp:
        """Output from ``offset`` on; with ``wait``, long-poll until there is some or the task ends."""

        async def available() -> TaskLogResp | None:
            async with self.context.db.read() as session:
                task, _, _ = await load_task(session, task_uuid)
                await require_role(session, user, await session.get_one(Group, task.group_id), Role.Read)
                chunks = (await session.scalars(
                    sa.select(TaskLog)
                    .where(TaskLog.task_id == task.id, TaskLog.stream == stream, TaskLog.offset + TaskLog.length > offset)
                    .order_by(TaskLog.offset)
                    .limit(MAX_ANSWER_CHUNKS)
                )).all()
            ended = task.archived_at is not None
            if chunks:
                last = chunks[-1].offset + chunks[-1].length
                return TaskLogResp(stream=stream, offset=chunks[0].offset, next=last, data="".join(c.data for c in chunks),
                                   complete=ended and len(chunks) < MAX_ANSWER_CHUNKS, kept=True)
            if task.archived_at is None:
                return None
            kept = now() - task.archived_at < RETENTION
            return TaskLogResp(stream=stream, offset=offset, next=offset, data="", complete=True, kept=kept)

        found = await long_poll(self.context, available, EVENTS, lambda event: event.get("uuid") == str(task_uuid), wait)
        return found or TaskLogResp(stream=stream, offset=offset, next=offset, data="", complete=False, kept=True)

    async def prune(self) -> None:
        """Forget the live output of tasks that ended more than an hour ago."""
        async with self.context.db.write() as session:
            ended = sa.select(Task.id).where(Task.archived_at < now() - RETENTION)
            await session.execute(sa.delete(TaskLog).where(TaskLog.task_id.in_(ended)))
