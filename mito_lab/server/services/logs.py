"""Live output: the newest part of each running task's stdout and stderr, kept in the database
(so any coordinator can serve it) in a bounded window, and followed by clients with long polls.
The complete output stays what it always was: the ``std-log`` artifact of a ``--terminal`` task."""

from __future__ import annotations

import uuid as uuid_module
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import after_commit
from mito_lab.server.db.models import Group, Task, TaskLog, User
from mito_lab.server.services.activity import EVENTS, long_poll
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import require_role
from mito_lab.server.services.tasks import load_task, now
from mito_lab.wire import LogChunk, LogStream, Role, TaskLogResp

WINDOW_BYTES = 1 << 20  # per stream
RETENTION = timedelta(hours=1)  # after the task ends
MAX_ANSWER_CHUNKS = 16  # up to 1 MiB per answer


async def append(context: Context, session: AsyncSession, task: Task, chunk: LogChunk) -> None:
    """Keep a chunk a worker shipped (a retried one we already have is ignored), drop what falls
    out of the window, and tell followers."""
    end = await session.scalar(
        sa.select(sa.func.max(TaskLog.offset + TaskLog.length)).where(TaskLog.task_id == task.id, TaskLog.stream == chunk.stream)
    ) or 0
    if chunk.offset < end or not chunk.length:
        return
    session.add(TaskLog(task_id=task.id, stream=chunk.stream, offset=chunk.offset, length=chunk.length, data=chunk.data))
    new_end = chunk.offset + chunk.length
    await session.execute(
        sa.delete(TaskLog).where(
            TaskLog.task_id == task.id, TaskLog.stream == chunk.stream, TaskLog.offset + TaskLog.length <= new_end - WINDOW_BYTES
        )
    )
    event = {"kind": "log", "uuid": str(task.uuid), "group": await context.group_name(session, task.group_id),
             "stream": chunk.stream, "next": new_end}
    after_commit(session, lambda: context.events.publish(EVENTS, event))


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
