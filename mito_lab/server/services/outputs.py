"""Task outputs that workers upload: an upload URL is handed out against the group's quota, and the
artifact is recorded (and charged) only once its object is in the store with the declared size
(``services/uploads.py``).

Neither protocol says when an upload completed (the reference's workers must keep working
unchanged), so the store is asked when it matters: when the task is committed, and when its worker
is lost. An output that did not arrive is dropped; the task says so (``OutputsLost``) or, its
worker gone before the commit, runs again.
"""

from __future__ import annotations

import uuid as uuid_module

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import Statements

from mito_lab.server.db.models import Group, Task
from mito_lab.server.services.context import Context
from mito_lab.server.services.uploads import ARTIFACTS, FAILED, grant_upload, settle
from mito_lab.wire import ArtifactContentType, UploadResp

_grants = ARTIFACTS.grants
_PENDING = sa.select(_grants.c.task_uuid, _grants.c.content_type).where(
    _grants.c.task_uuid.in_(sa.bindparam("uuids", expanding=True)), _grants.c.uploader_id.is_(None)
).distinct()


async def reserve_output(context: Context, session: AsyncSession, task: Task, content_type: ArtifactContentType, size: int) -> UploadResp:
    """Sign an upload of ``size`` bytes for an output of ``task`` if the group has room for it;
    nothing is recorded or charged until it arrived (``confirm_outputs``)."""
    group = await session.get_one(Group, task.group_id)
    return await grant_upload(context, await session.connection(), ARTIFACTS, (task.uuid, content_type), group, size, None)


async def confirm_outputs(context: Context, connection: Statements, task_uuids: list[uuid_module.UUID]) -> set[uuid_module.UUID]:
    """Record the outputs of these tasks that arrived whole and charge their groups; drop the
    others. Returns the tasks that lost an output."""
    if not task_uuids:
        return set()
    lost: set[uuid_module.UUID] = set()
    for task_uuid, content_type in (await connection.execute(_PENDING, {"uuids": task_uuids})).all():
        if await settle(context, connection, ARTIFACTS, (task_uuid, content_type), final=True) == FAILED:
            lost.add(task_uuid)
    return lost
