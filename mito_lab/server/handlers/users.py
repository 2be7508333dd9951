"""The caller's own account."""

from mito_lab.server.handlers.base import ApiHandler, operation
from mito_lab.wire import (
    ChangePasswordReq,
    LoginResp,
    UserGroupsResp,
)


class PasswordHandler(ApiHandler):
    @operation("Change your password (your other sessions end)", ChangePasswordReq, LoginResp)
    async def post(self, username: str) -> None:
        user = await self.user()
        request = self.body()
        token = await self.mito.users.change_password(
            user, username, bytes(request.old_md5_password), bytes(request.new_md5_password)
        )
        self.send(LoginResp(token=token))


class MyGroupsHandler(ApiHandler):
    @operation("Your groups and roles", response=UserGroupsResp)
    async def get(self) -> None:
        user = await self.user()
        self.send(UserGroupsResp(groups=await self.mito.groups.my_groups(user)))


default_handlers = [
    (r"/users/groups", MyGroupsHandler),
    (r"/users/(?P<username>[^/]+)/password", PasswordHandler),
]
