"""Group attachments: files a group shares with its tasks (inputs, datasets, notebooks)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import Attachment, Group, User
from mito_lab.server.errors import InvalidRequest, NotFound
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import (
    charge_storage,
    group_by_name,
    group_with_role,
    locked_group,
    require_role,
)
from mito_lab.server.services.tasks import DELETE_GUARD, now
from mito_lab.server.services.uploads import ATTACHMENTS, attachment_object, grant_upload, settle_attachments
from mito_lab.server.storage import BATCH_DOWNLOAD_URL_LIFETIME, download_url_lifetime
from mito_lab.wire import (
    AttachmentDownloadItem,
    AttachmentMetadata,
    AttachmentQueryInfo,
    AttachmentsDownloadResp,
    AttachmentsQueryReq,
    AttachmentsQueryResp,
    DeleteAttachmentsListResp,
    DeleteAttachmentsResp,
    DownloadResp,
    Role,
    UploadResp,
    relative_path_problem,
)

MAX_OBJECT_KEY = 1024


def check_key(group_name: str, key: str) -> str:
    """Keys are relative slash-separated paths; anything that could escape or alias is refused."""
    problem = relative_path_problem(key)
    if problem is not None:
        raise InvalidRequest(f"invalid attachment key {key!r}: {problem}")
    if len(f"{group_name}/{key}") >= MAX_OBJECT_KEY:
        raise InvalidRequest(f"attachment key too long: group/key must be under {MAX_OBJECT_KEY} characters")
    return key


def _group_named(name: str) -> sa.ScalarSelect[int]:
    return sa.select(Group.id).where(Group.group_name == name).scalar_subquery()


def _metadata(attachment: Attachment) -> AttachmentMetadata:
    return AttachmentMetadata(size=attachment.size, created_at=attachment.created_at, updated_at=attachment.updated_at)


class AttachmentService:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def _find(self, session: AsyncSession, group: Group, key: str) -> Attachment:
        check_key(group.group_name, key)  # a key that could never be stored gets a 400, not a 404
        attachment = await session.scalar(sa.select(Attachment).where(Attachment.group_id == group.id, Attachment.key == key))
        if attachment is None:
            raise NotFound(f"Attachment {key} of group {group.group_name}")
        return attachment

    def _link(self, group: Group, attachment: Attachment, lifetime: timedelta | None = None) -> str:
        return self.context.store.download_url(
            self.context.attachments_bucket, attachment_object(group.group_name, attachment), lifetime or download_url_lifetime(attachment.size)
        )

    async def upload(self, user: User, group_name: str, key: str, size: int) -> UploadResp:
        """Sign the upload; the attachment is recorded once it arrived whole (``services/uploads.py``)."""
        async with self.context.db.write() as session:
            group = await group_with_role(session, user, group_name, Role.Write)
            check_key(group.group_name, key)
            return await grant_upload(self.context, await session.connection(), ATTACHMENTS, (group.id, key), group, size, user.id)

    async def metadata(self, user: User, group_name: str, key: str) -> AttachmentMetadata:
        await settle_attachments(self.context, _group_named(group_name), [key])
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, group_name, Role.Read)
            return _metadata(await self._find(session, group, key))

    async def download(self, user: User, group_name: str, key: str) -> DownloadResp:
        await settle_attachments(self.context, _group_named(group_name), [key])
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, group_name, Role.Read)
            attachment = await self._find(session, group, key)
            return DownloadResp(url=self._link(group, attachment), size=attachment.size)

    def _filtered(self, group: Group, key: str | None, limit: int | None, offset: int | None) -> sa.Select:
        query = sa.select(Attachment).where(Attachment.group_id == group.id)
        if key:
            query = query.where(Attachment.key.contains(key, autoescape=True))
        return query.order_by(Attachment.key).limit(limit).offset(offset)

    async def query(self, user: User, group_name: str, request: AttachmentsQueryReq) -> AttachmentsQueryResp:
        await settle_attachments(self.context, _group_named(group_name))
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, group_name, Role.Read)
            query = self._filtered(group, request.key, request.limit, request.offset)
            if request.count:
                total = await session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
                return AttachmentsQueryResp(count=total or 0, attachments=[], group_name=group.group_name)
            rows = (await session.scalars(query)).all()
            found = [AttachmentQueryInfo(key=a.key, **_metadata(a).model_dump()) for a in rows]
            return AttachmentsQueryResp(count=len(found), attachments=found, group_name=group.group_name)

    async def download_many(
        self, user: User, group_name: str, key: str | None = None, limit: int | None = None,
        offset: int | None = None, keys: list[str] | None = None,
    ) -> AttachmentsDownloadResp:
        """Links for the attachments matching ``key`` (a substring), or for exactly ``keys``."""
        await settle_attachments(self.context, _group_named(group_name), keys)
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, group_name, Role.Read)
            query = self._filtered(group, key, limit, offset)
            if keys is not None:
                query = query.where(Attachment.key.in_(keys))
            rows = (await session.scalars(query)).all()
            downloads = [
                AttachmentDownloadItem(key=a.key, url=self._link(group, a, BATCH_DOWNLOAD_URL_LIFETIME), size=a.size) for a in rows
            ]
            return AttachmentsDownloadResp(downloads=downloads, group_name=group.group_name)

    async def delete(self, user: User | None, group_name: str, key: str) -> None:
        """Delete one attachment. ``user=None`` is the administrators' route: any group, no one-hour guard."""
        await self._delete(user, group_name, [key], None, guarded=user is not None, strict=True)

    async def delete_many(
        self, user: User, group_name: str, key: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> DeleteAttachmentsResp:
        """Delete the attachments matching ``key`` (a substring), skipping those younger than an hour."""
        deleted, group = await self._delete(user, group_name, None, (key, limit, offset), True, strict=False)
        return DeleteAttachmentsResp(deleted_count=len(deleted), group_name=group)

    async def delete_list(self, user: User, group_name: str, keys: list[str]) -> DeleteAttachmentsListResp:
        deleted, group = await self._delete(user, group_name, keys, None, True, strict=False)
        failed = [key for key in keys if key not in set(deleted)]
        return DeleteAttachmentsListResp(deleted_count=len(deleted), failed_keys=failed, group_name=group)

    async def _delete(
        self, user: User | None, group_name: str, keys: list[str] | None, window: tuple[str | None, int | None, int | None] | None,
        guarded: bool, strict: bool,
    ) -> tuple[list[str], str]:
        """Delete rows first (and give the space back), then the objects: a failed object deletion
        leaves an invisible orphan, never a row that points at nothing."""
        async with self.context.db.write() as session:
            group = await group_by_name(session, group_name)
            await require_role(session, user, group, Role.Write)
            group = await locked_group(self.context, session, group.id)
            query = self._filtered(group, *(window or (None, None, None)))
            if keys is not None:
                query = query.where(Attachment.key.in_(keys))
            rows = (await session.scalars(query)).all()
            if strict and not rows:
                raise NotFound(f"Attachment {keys[0] if keys else ''} of group {group.group_name}")
            cutoff = now() - DELETE_GUARD
            doomed = [a for a in rows if not guarded or a.updated_at <= cutoff]
            if strict and not doomed:
                raise InvalidRequest("the attachment was updated less than an hour ago and cannot be deleted yet")
            for attachment in doomed:
                await charge_storage(session, group, attachment.size, 0)
                await session.delete(attachment)
            names = [a.key for a in doomed]
            objects = [attachment_object(group.group_name, a) for a in doomed]
            group_name = group.group_name
        for name in objects:
            await self.context.store.delete(self.context.attachments_bucket, name)
        return names, group_name
