"""Groups."""

from mito_lab.server.handlers.base import ApiHandler
from mito_lab.wire import CreateGroupReq


class GroupsHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        request = self.body(CreateGroupReq)
        await self.mito.groups.create(user, request.group_name)
        self.send(None)


default_handlers = [
    (r"/groups", GroupsHandler),
]
