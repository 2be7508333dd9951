"""Uploads commit on completion, for artifacts and attachments alike, on both object stores.

Handing out an upload URL records a grant: the declared size, the object the URL names (each URL
names an object of its own, ``<name>~<token>``), who may complete it (a user of the group, or the
task's worker) and when the URL expires. Nothing is recorded or charged then. A grant is settled
once its upload may have completed:
- a worker's outputs when the task is committed or the worker lost (``outputs.confirm_outputs``);
- a user's upload when that artifact or attachment is next read (the SDK reads it right after its
  PUT: its completion report), else by the coordinator's housekeeping (``sweep``).
Neither protocol reports completions (the reference's clients must keep working), so settling asks
the store what is there (a stat; a HEAD on S3, which does not enforce a declared length). What
arrived whole, from an uploader still allowed to write, within the group's quota, becomes the
record at the size that arrived and replaces (and deletes) the previous object; anything else is
deleted. The newest grant wins: a URL handed out before a later upload can never replace it. A
grant is kept until its URL expired, so what a stale URL still uploads is deleted as well.
"""

from __future__ import annotations

import logging
import secrets
import uuid as uuid_module
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mito_lab.server.db.engine import chunks
from mito_lab.server.db.models import (
    Artifact,
    ArtifactUpload,
    Attachment,
    AttachmentUpload,
    Group,
    Task,
    User,
    UserGroup,
    utcnow,
)
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import require_room
from mito_lab.server.storage import UPLOAD_URL_LIFETIME
from mito_lab.wire import ArtifactContentType, GroupState, Role, UploadResp, UserState

log = logging.getLogger(__name__)

MAX_OBJECT_NAME = 1024  # bytes, S3's limit
_TOKEN_HEX = 16


def artifact_key(task_uuid: uuid_module.UUID, content_type: ArtifactContentType) -> str:
    """The object of an artifact stored before each upload had its own (reference 5.3)."""
    return f"{task_uuid}/{content_type.file_name}"


def artifact_object(artifact: Artifact) -> str:
    return artifact.object_key or artifact_key(artifact.task_uuid, artifact.content_type)


def attachment_object(group_name: str, attachment: Attachment) -> str:
    return attachment.object_key or f"{group_name}/{attachment.key}"


@dataclass(frozen=True)
class Kind:
    """What an upload fills: a task's artifact of one type, or a group's attachment."""

    grants: sa.Table
    records: sa.Table
    key: tuple[str, str]  # the two columns naming one artifact or attachment
    what: str

    def bucket(self, context: Context) -> str:
        return context.artifacts_bucket if self is ARTIFACTS else context.attachments_bucket

    async def group_of(self, connection: Any, key: tuple[Any, Any]) -> int:
        if self is ATTACHMENTS:
            return key[0]
        return await connection.scalar(sa.select(Task.group_id).where(Task.uuid == key[0]))

    async def former_name(self, context: Context, connection: Any, key: tuple[Any, Any]) -> str:
        """The object's name before uploads had their own (a record or grant from before 0007)."""
        if self is ARTIFACTS:
            return artifact_key(key[0], ArtifactContentType(key[1]))
        return f"{await context.group_name(connection, key[0])}/{key[1]}"

    def new_name(self, context: Context, key: tuple[Any, Any], group_name: str) -> str:
        token = secrets.token_hex(_TOKEN_HEX // 2)
        if self is ARTIFACTS:
            return f"{key[0]}/{ArtifactContentType(key[1]).value}~{token}.tar.gz"
        base = f"{group_name}/{key[1]}".encode()[: MAX_OBJECT_NAME - _TOKEN_HEX - 1].decode(errors="ignore")
        return f"{base}~{token}"

    def where(self, table: sa.Table, key: tuple[Any, Any]) -> list[sa.ColumnElement[bool]]:
        return [table.c[column] == value for column, value in zip(self.key, key, strict=True)]


ARTIFACTS = Kind(ArtifactUpload.__table__, Artifact.__table__, ("task_uuid", "content_type"), "artifact")
ATTACHMENTS = Kind(AttachmentUpload.__table__, Attachment.__table__, ("group_id", "key"), "attachment")

_MAY_WRITE = (
    sa.select(UserGroup.role)
    .join(User, User.id == UserGroup.user_id)
    .join(Group, Group.id == UserGroup.group_id)
    .where(
        UserGroup.user_id == sa.bindparam("user_id"), UserGroup.group_id == sa.bindparam("group_id"),
        User.state == UserState.Active, Group.state == GroupState.Active,
    )
)
_groups = Group.__table__


async def grant_upload(
    context: Context, connection: Any, kind: Kind, key: tuple[Any, Any], group: Group, size: int, uploader_id: int | None
) -> UploadResp:
    """Sign an upload of ``size`` bytes into an object of its own if the group has room for it;
    nothing is recorded or charged until it arrived (``settle``). ``uploader_id`` None: the
    task's worker."""
    await settle(context, connection, kind, key)  # an earlier upload that completed is the one replaced
    recorded = await connection.scalar(sa.select(kind.records.c.size).where(*kind.where(kind.records, key)))
    require_room(group, recorded or 0, size)
    name = kind.new_name(context, key, group.group_name)
    moment = utcnow()
    await connection.execute(kind.grants.insert().values(
        **dict(zip(kind.key, key, strict=True)), size=size, object_key=name, uploader_id=uploader_id,
        expires_at=moment + UPLOAD_URL_LIFETIME, recorded=False, created_at=moment, updated_at=moment,
    ))
    return UploadResp(exist=recorded is not None, url=context.store.upload_url(kind.bucket(context), name, size))


RECORDED, FAILED = "recorded", "failed"


async def settle(context: Context, connection: Any, kind: Kind, key: tuple[Any, Any], final: bool = False) -> str | None:
    """Settle the grants of one artifact or attachment (in the caller's transaction): RECORDED if
    an upload became the record, FAILED if none did and the worker's arrived wrong or was refused
    (or, when ``final``, did not arrive at all), None otherwise. ``final``: the worker's uploads
    are over (its task was committed or it was lost): none of its grants is left waiting."""
    grants_query = sa.select(kind.grants).where(*kind.where(kind.grants, key)).order_by(kind.grants.c.id.desc())
    if not context.db.is_sqlite:  # coordinators settling the same object take turns
        grants_query = grants_query.with_for_update()
    grants = (await connection.execute(grants_query)).all()
    if not grants:
        return None
    moment, bucket = utcnow(), kind.bucket(context)
    record = (await connection.execute(
        sa.select(kind.records.c.id, kind.records.c.size, kind.records.c.object_key).where(*kind.where(kind.records, key))
    )).first()
    former = await kind.former_name(context, connection, key)
    current = record and (record.object_key or former)
    group_id = await kind.group_of(connection, key)
    if kind is ARTIFACTS and any(grant.uploader_id is not None and not grant.recorded for grant in grants):
        await no_longer_cached(connection, [key[0]])  # a user's upload may replace what the run produced
    # a cache hit's artifact names its source's object: replacing it frees nothing, deletes nothing
    kept = record is not None and kind is ARTIFACTS and bool(await shared_objects(connection, [current], besides={record.id}))
    freed = 0 if record is None or kept else record.size
    newest_recorded = max((grant.id for grant in grants if grant.recorded), default=0)
    chosen, outcome = None, None
    dropped: list[int] = []
    doomed: list[str] = []  # objects to delete: never the record's
    for grant in grants:
        workers = grant.uploader_id is None
        over = (final and workers) or grant.expires_at <= moment
        name = grant.object_key or former
        if grant.recorded or chosen is not None or grant.id < newest_recorded:
            if not grant.recorded:  # superseded by a newer upload: whatever it brought goes
                doomed.append(name)
            if over:
                dropped.append(grant.id)
            continue
        arrived = await context.store.size(bucket, name)
        refusal = None
        if arrived is None:
            if over:
                dropped.append(grant.id)
            if final and workers:
                log.warning("%s %s: nothing arrived through its upload URL", kind.what, "/".join(map(str, key)))
                outcome = FAILED
            continue
        if arrived != grant.size:
            refusal = f"{arrived} bytes arrived, {grant.size} were declared"
        elif grant.uploader_id is not None and (
            await connection.scalar(_MAY_WRITE, {"user_id": grant.uploader_id, "group_id": group_id})
        ) not in Role.Write.and_above():
            refusal = "its uploader may no longer write in the group"
        elif not await _has_room(connection, group_id, arrived - freed):
            refusal = "the group's storage quota would be exceeded"
        if refusal is None:
            chosen = grant
            continue
        log.warning("%s %s: upload refused and deleted: %s", kind.what, "/".join(map(str, key)), refusal)
        doomed.append(name)
        outcome = FAILED if workers else outcome
        if over:
            dropped.append(grant.id)
    if chosen is not None:
        outcome = RECORDED
        await _record(connection, kind, key, record, chosen, group_id, moment, freed)
        if current is not None and not kept:
            doomed.append(current)
        if (final and chosen.uploader_id is None) or chosen.expires_at <= moment:
            dropped.append(chosen.id)
        else:  # kept until its URL expires: older grants stay superseded
            await connection.execute(kind.grants.update().where(kind.grants.c.id == chosen.id).values(recorded=True, updated_at=moment))
        current = chosen.object_key or former
    if dropped:
        await connection.execute(kind.grants.delete().where(kind.grants.c.id.in_(dropped)))
    for name in dict.fromkeys(doomed):
        if name != current:
            await context.store.delete(bucket, name)
    return outcome


async def _has_room(connection: Any, group_id: int, growth: int) -> bool:
    if growth <= 0:
        return True
    row = (await connection.execute(sa.select(_groups.c.storage_used, _groups.c.storage_quota).where(_groups.c.id == group_id))).one()
    return row.storage_used + growth <= row.storage_quota


async def _record(
    connection: Any, kind: Kind, key: tuple[Any, Any], record: Any, grant: Any, group_id: int, moment: datetime, freed: int,
) -> None:
    """Make the grant's object the record, at the size that arrived, and charge the difference
    with what the record's former object gives back (``freed``)."""
    if record is None:
        await connection.execute(kind.records.insert().values(
            **dict(zip(kind.key, key, strict=True)), size=grant.size, object_key=grant.object_key, created_at=moment, updated_at=moment,
        ))
    else:
        await connection.execute(kind.records.update().where(kind.records.c.id == record.id).values(
            size=grant.size, object_key=grant.object_key, digest=None, updated_at=moment,
        ))
    growth = grant.size - freed
    if growth:
        used = _groups.c.storage_used
        await connection.execute(
            _groups.update().where(_groups.c.id == group_id).values(storage_used=sa.case((used + growth < 0, 0), else_=used + growth))
        )


async def shared_objects(connection: Any, names: Collection[str], besides: Collection[int] = ()) -> set[str]:
    """The artifact objects among ``names`` that artifacts other than ``besides`` (ids) name too: a
    cache hit's artifacts name its source's objects (``services/cache.py``). An object is charged
    once, and deleted and given back only with the last artifact naming it."""
    artifacts = ARTIFACTS.records
    named: set[str] = set()
    for chunk in chunks(list(names)):
        query = sa.select(artifacts.c.object_key, artifacts.c.id).where(artifacts.c.object_key.in_(chunk))
        named.update(name for name, artifact_id in await connection.execute(query) if artifact_id not in besides)
    return named


async def no_longer_cached(connection: Any, task_uuids: Collection[uuid_module.UUID]) -> None:
    """These tasks' artifacts changed (deleted, or replaced by a user's upload): they are no longer
    what the run produced, so the run answers no cache lookup. Written before the artifacts
    change, so that on PostgreSQL it waits for a cache hit taking them to commit (the lookup
    locks its source), and a hit taking them afterwards finds the task no longer a source."""
    tasks = Task.__table__
    for chunk in chunks(list(task_uuids)):
        await connection.execute(tasks.update().where(tasks.c.uuid.in_(chunk), tasks.c.cache_key.is_not(None)).values(cache_key=None))


async def settle_pending(context: Context, kind: Kind, condition: sa.ColumnElement[bool], users_only: bool = True) -> None:
    """Settle the grants matching ``condition`` that are still waiting (users' only, unless
    ``users_only`` is false), each object in its own transaction; nothing to do costs one read."""
    waiting = sa.select(*(kind.grants.c[column] for column in kind.key)).where(condition, kind.grants.c.recorded.is_(False)).distinct()
    if users_only:
        waiting = waiting.where(kind.grants.c.uploader_id.is_not(None))
    await _settle_each(context, kind, waiting)


async def _settle_each(context: Context, kind: Kind, keys_query: sa.Select) -> None:
    async with context.db.lookup() as connection:
        keys = [tuple(row) for row in (await connection.execute(keys_query)).all()]
    for key in keys:
        async with context.db.transaction() as connection:
            await settle(context, connection, kind, key)


async def sweep(context: Context) -> None:
    """Housekeeping: settle users' uploads that no one has read yet, and every grant whose URL
    expired (deleting what stale URLs uploaded)."""
    moment = utcnow()
    for kind in (ARTIFACTS, ATTACHMENTS):
        grants = kind.grants
        due = (grants.c.uploader_id.is_not(None) & grants.c.recorded.is_(False)) | (grants.c.expires_at <= moment)
        await _settle_each(context, kind, sa.select(*(grants.c[column] for column in kind.key)).where(due).distinct())


async def settle_artifacts(context: Context, tasks: sa.Select | Sequence[uuid_module.UUID]) -> None:
    """Before the artifacts of these tasks are read: record the users' uploads that completed."""
    await settle_pending(context, ARTIFACTS, ARTIFACTS.grants.c.task_uuid.in_(tasks))


async def settle_attachments(context: Context, group: int | sa.ScalarSelect[int], keys: Sequence[str] | None = None) -> None:
    """Before attachments of this group (its id, or a query of it) are read: record the uploads
    that completed."""
    condition = ATTACHMENTS.grants.c.group_id == group
    if keys is not None:
        condition = condition & ATTACHMENTS.grants.c.key.in_(keys)
    await settle_pending(context, ATTACHMENTS, condition)
