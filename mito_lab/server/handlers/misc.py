"""Health, login and token check."""

from mito_lab.server.handlers.base import ApiHandler, operation
from mito_lab.wire import (
    HealthResp,
    LoginReq,
    LoginResp,
    RedisConnectionInfo,
)


class HealthHandler(ApiHandler):
    @operation("Liveness", response=HealthResp, auth="none")
    def get(self) -> None:
        self.send(HealthResp())


class LoginHandler(ApiHandler):
    @operation("Log in (429 with Retry-After after repeated failures)", LoginReq, LoginResp, auth="none", errors=(429,))
    async def post(self) -> None:
        request = self.body()
        token = await self.mito.users.login(request.username, request.digest(), request.retain, self.request.remote_ip)
        self.send(LoginResp(token=token))


class AuthHandler(ApiHandler):
    @operation("The username behind the token", answer="text")
    async def get(self) -> None:
        user = await self.user()
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(user.username)


class RedisHandler(ApiHandler):
    @operation("Always null: task states are followed through GET /events", response=RedisConnectionInfo)
    async def get(self) -> None:
        """The reference's Redis URL for clients, always null (the reference's answer without
        Redis): its ACL user could read every group's ``task:*`` keys. ``GET /events`` streams the
        same states, of the caller's groups only (``events.REFERENCE_ACL_USERS``)."""
        await self.user()
        self.send(RedisConnectionInfo(url=None))


class OpenApiHandler(ApiHandler):
    def get(self) -> None:
        """The API description, generated from the routes and the wire models (built once)."""
        self.finish(self.mito.openapi())


default_handlers = [
    (r"/health", HealthHandler),
    (r"/login", LoginHandler),
    (r"/auth", AuthHandler),
    (r"/redis", RedisHandler),
    (r"/openapi.json", OpenApiHandler),
]
