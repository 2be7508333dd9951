"""System administration (``users.admin``)."""

import asyncio
import hmac
import uuid

from mito_lab.server.db.models import User
from mito_lab.server.errors import PermissionDenied
from mito_lab.server.handlers.base import ApiHandler, operation
from mito_lab.server.handlers.groups import GROUP
from mito_lab.server.handlers.tasks import TASK, content_type
from mito_lab.server.handlers.workers import WORKER, shutdown_op
from mito_lab.wire import (
    AdminChangePasswordReq,
    ChangeUserStateReq,
    CreateUserReq,
    GroupQuotaReq,
    GroupQuotaResp,
    ShutdownReq,
    StorageQuotaReq,
    StorageQuotaResp,
    UserState,
    UserStateResp,
)

USER = r"(?P<username>[^/]+)"


class AdminHandler(ApiHandler):
    async def admin(self) -> User:
        user = await self.user()
        if not user.admin:
            raise PermissionDenied("this needs a system administrator")
        return user


class AdminUsersHandler(AdminHandler):
    @operation("Create a user (system administrators)", CreateUserReq, auth="admin", errors=(409,))
    async def post(self) -> None:
        await self.admin()
        request = self.body()
        await self.mito.users.create(request.username, request.digest(), request.admin)
        self.send(None)


class AdminUserHandler(AdminHandler):
    @operation("Soft-delete a user", response=UserStateResp, auth="admin")
    async def delete(self, username: str) -> None:
        """Soft delete: the user can no longer log in; their data stays."""
        await self.admin()
        self.send(UserStateResp(state=await self.mito.users.set_state(username, UserState.Deleted)))


class AdminUserPasswordHandler(AdminHandler):
    @operation("Reset a user's password (ends their sessions)", AdminChangePasswordReq, auth="admin")
    async def post(self, username: str) -> None:
        await self.admin()
        await self.mito.users.set_password(username, bytes(self.body().new_md5_password))
        self.send(None)


class AdminUserStateHandler(AdminHandler):
    @operation("Set a user's state", ChangeUserStateReq, UserStateResp, auth="admin")
    async def post(self, username: str) -> None:
        await self.admin()
        self.send(UserStateResp(state=await self.mito.users.set_state(username, self.body().state)))


class AdminGroupQuotaHandler(AdminHandler):
    @operation("Change how many groups a user may create (N, =N, +N, -N)", GroupQuotaReq, GroupQuotaResp, auth="admin")
    async def post(self, username: str) -> None:
        await self.admin()
        quota = await self.mito.users.adjust_group_quota(username, self.body().group_quota)
        self.send(GroupQuotaResp(group_quota=quota))


class AdminStorageQuotaHandler(AdminHandler):
    @operation("Change a group's storage quota (e.g. +1GB, =500MB)", StorageQuotaReq, StorageQuotaResp, auth="admin")
    async def post(self, group: str) -> None:
        await self.admin()
        quota = await self.mito.groups.adjust_storage_quota(group, self.body().storage_quota)
        self.send(StorageQuotaResp(storage_quota=quota))


class AdminAttachmentHandler(AdminHandler):
    @operation("Delete any attachment at once", auth="admin")
    async def delete(self, group: str, key: str) -> None:
        """Delete any attachment at once (no one-hour guard)."""
        await self.admin()
        await self.mito.attachments.delete(None, group, key)
        self.send(None)


class AdminArtifactHandler(AdminHandler):
    @operation("Delete any artifact at once", auth="admin")
    async def delete(self, task_uuid: str, kind: str) -> None:
        """Delete any artifact at once (no one-hour guard)."""
        await self.admin()
        await self.mito.tasks.delete_artifact(None, uuid.UUID(task_uuid), content_type(kind))
        self.send(None)


class AdminWorkerHandler(AdminHandler):
    @operation("Shut down any worker", auth="admin", query={"op": "graceful (default) or force"})
    async def delete(self, worker_uuid: str) -> None:
        """Shut down any worker (``?op=graceful`` or ``?op=force``)."""
        await self.admin()
        await self.mito.workers.shutdown(None, uuid.UUID(worker_uuid), shutdown_op(self))
        self.send(None)


class AdminShutdownHandler(AdminHandler):
    @operation("Stop the coordinator (the secret is in its start-up log)", ShutdownReq, auth="admin")
    async def post(self) -> None:
        """Stop the coordinator gracefully; the secret is the one it logged when it started."""
        await self.admin()
        if not hmac.compare_digest(self.body().secret.encode(), self.mito.shutdown_secret.encode()):
            raise PermissionDenied("wrong shutdown secret")
        self.send(None)
        asyncio.get_running_loop().call_later(0.1, self.mito.stopping.set)  # after this answer is out


default_handlers = [
    (r"/admin/shutdown", AdminShutdownHandler),
    (r"/admin/users", AdminUsersHandler),
    (rf"/admin/users/{USER}", AdminUserHandler),
    (rf"/admin/users/{USER}/password", AdminUserPasswordHandler),
    (rf"/admin/users/{USER}/state", AdminUserStateHandler),
    (rf"/admin/users/{USER}/group-quota", AdminGroupQuotaHandler),
    (rf"/admin/groups/{GROUP}/storage-quota", AdminStorageQuotaHandler),
    (rf"/admin/groups/{GROUP}/attachments/(?P<key>.+)", AdminAttachmentHandler),
    (rf"/admin/tasks/{TASK}/artifacts/(?P<kind>[^/]+)", AdminArtifactHandler),
    (rf"/admin/workers/{WORKER}", AdminWorkerHandler),
]
