"""Groups and their members."""

from mito_lab.server.errors import InvalidRequest
from mito_lab.server.handlers.base import TASK_JSON_BODY, ApiHandler, operation, query_arguments
from mito_lab.wire import (
    CreateGroupReq,
    GroupQueryInfo,
    RemoveGroupMembersReq,
    UpdateGroupMembersReq,
)

GROUP = r"(?P<group>[^/]+)"


class GroupsHandler(ApiHandler):
    @operation("Create a group", CreateGroupReq, errors=(409,))
    async def post(self) -> None:
        user = await self.user()
        request = self.body()
        await self.mito.groups.create(user, request.group_name)
        self.send(None)


class GroupHandler(ApiHandler):
    @operation("A group's information", response=GroupQueryInfo)
    async def get(self, group: str) -> None:
        user = await self.user()
        self.send(await self.mito.groups.info(user, group))


class GroupMembersHandler(ApiHandler):
    @operation("Add members or change their roles", UpdateGroupMembersReq, max_body=TASK_JSON_BODY)
    async def put(self, group: str) -> None:
        user = await self.user()
        request = self.body()
        await self.mito.groups.set_members(user, group, request.relations)
        self.send(None)

    @operation("Remove members", query={"users": "a username (repeat the parameter for several)"})
    async def delete(self, group: str) -> None:
        """``DELETE /groups/{g}/users?users=a&users=b``."""
        user = await self.user()
        usernames = query_arguments(self, "users")
        if not usernames:
            raise InvalidRequest("give the users to remove as ?users=a&users=b")
        await self.mito.groups.remove_members(user, group, usernames)
        self.send(None)


class GroupMembersRemoveHandler(ApiHandler):
    @operation("Remove members", RemoveGroupMembersReq, max_body=TASK_JSON_BODY)
    async def post(self, group: str) -> None:
        """The same as the DELETE, with a JSON body ``{"users": [...]}``."""
        user = await self.user()
        await self.mito.groups.remove_members(user, group, self.body().users)
        self.send(None)


default_handlers = [
    (r"/groups", GroupsHandler),
    (rf"/groups/{GROUP}", GroupHandler),
    (rf"/groups/{GROUP}/users", GroupMembersHandler),
    (rf"/groups/{GROUP}/users/remove", GroupMembersRemoveHandler),
]
