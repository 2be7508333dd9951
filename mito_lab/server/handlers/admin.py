"""System administration (``users.admin``)."""

from mito_lab.server.errors import PermissionDenied
from mito_lab.server.handlers.base import ApiHandler
from mito_lab.wire import CreateUserReq


class AdminHandler(ApiHandler):
    async def admin(self):  # type: ignore[no-untyped-def]
        user = await self.user()
        if not user.admin:
            raise PermissionDenied("this needs a system administrator")
        return user


class AdminUsersHandler(AdminHandler):
    async def post(self) -> None:
        await self.admin()
        request = self.body(CreateUserReq)
        await self.mito.users.create(request.username, request.digest(), request.admin)
        self.send(None)


default_handlers = [
    (r"/admin/users", AdminUsersHandler),
]
