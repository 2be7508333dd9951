"""Task outputs that workers upload: an upload URL is handed out against the group's quota, and the
artifact is recorded (and charged) only once its object is in the store with the declared size.

Neither protocol says when an upload completed (the reference's workers must keep working
unchanged), so the store is asked when it matters: when the task is committed, and when its worker
is lost. An output that did not arrive is dropped; the task says so (``OutputsLost``) or, its
worker gone before the commit, runs again.
"""

from __future__ import annotations

import logging
import uuid as uuid_module

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mito_lab.server.db.models import Artifact, ArtifactUpload, Group, Task
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import require_room
from mito_lab.server.services.tasks import artifact_key, now
from mito_lab.wire import ArtifactContentType, UploadResp

log = logging.getLogger(__name__)

_uploads = ArtifactUpload.__table__
_artifacts = Artifact.__table__
_PENDING = (
    sa.select(_uploads.c.id, _uploads.c.task_uuid, _uploads.c.content_type, _uploads.c.size, Task.group_id)
    .join(Task, Task.uuid == _uploads.c.task_uuid)
    .where(_uploads.c.task_uuid.in_(sa.bindparam("uuids", expanding=True)))
)
_RECORDED_SIZE = sa.select(_artifacts.c.size).where(
    _artifacts.c.task_uuid == sa.bindparam("task_uuid"), _artifacts.c.content_type == sa.bindparam("content_type")
)


async def reserve_output(context: Context, session: AsyncSession, task: Task, content_type: ArtifactContentType, size: int) -> UploadResp:
    """Sign an upload of ``size`` bytes for an output of ``task`` if the group has room for it;
    nothing is recorded or charged until it arrived (``confirm_outputs``)."""
    recorded = await session.scalar(_RECORDED_SIZE, {"task_uuid": task.uuid, "content_type": content_type})
    require_room(await session.get_one(Group, task.group_id), recorded or 0, size)
    pending = await session.scalar(
        sa.select(ArtifactUpload).where(ArtifactUpload.task_uuid == task.uuid, ArtifactUpload.content_type == content_type)
    )
    if pending is None:
        session.add(ArtifactUpload(task_uuid=task.uuid, content_type=content_type, size=size))
    else:
        pending.size = size
    url = context.store.upload_url(context.artifacts_bucket, artifact_key(task.uuid, content_type), size)
    return UploadResp(exist=recorded is not None, url=url)


async def confirm_outputs(context: Context, connection: AsyncConnection, task_uuids: list[uuid_module.UUID]) -> set[uuid_module.UUID]:
    """Record the outputs of these tasks that arrived whole and charge their groups; drop the
    others. Returns the tasks that lost an output."""
    if not task_uuids:
        return set()
    pending = (await connection.execute(_PENDING, {"uuids": task_uuids})).all()
    lost: set[uuid_module.UUID] = set()
    for upload in pending:
        key = artifact_key(upload.task_uuid, upload.content_type)
        arrived = await context.store.size(context.artifacts_bucket, key)
        which = {"task_uuid": upload.task_uuid, "content_type": upload.content_type}
        recorded = await connection.scalar(_RECORDED_SIZE, which)
        where = (_artifacts.c.task_uuid == upload.task_uuid, _artifacts.c.content_type == upload.content_type)
        if arrived == upload.size:
            if recorded is None:
                await connection.execute(_artifacts.insert().values(**which, size=arrived, created_at=now(), updated_at=now()))
            else:
                await connection.execute(_artifacts.update().where(*where).values(size=arrived, updated_at=now()))
            growth = arrived - (recorded or 0)
        else:
            lost.add(upload.task_uuid)
            log.warning("task %s: output %s lost (%s bytes arrived of %d)", upload.task_uuid, upload.content_type.value, arrived, upload.size)
            growth = 0
            if arrived is not None:  # another size replaced what was recorded: neither is the output
                await context.store.delete(context.artifacts_bucket, key)
                if recorded is not None:
                    await connection.execute(_artifacts.delete().where(*where))
                    growth = -recorded
        if growth:
            used = Group.__table__.c.storage_used
            await connection.execute(
                Group.__table__.update().where(Group.__table__.c.id == upload.group_id)
                .values(storage_used=sa.case((used + growth < 0, 0), else_=used + growth))
            )
    if pending:
        await connection.execute(_uploads.delete().where(_uploads.c.id.in_([upload.id for upload in pending])))
    return lost
