"""Health, login and token check."""

from mito_lab.server.handlers.base import ApiHandler
from mito_lab.wire import HealthResp, LoginReq, LoginResp, RedisConnectionInfo


class HealthHandler(ApiHandler):
    def get(self) -> None:
        self.send(HealthResp())


class LoginHandler(ApiHandler):
    async def post(self) -> None:
        request = self.body(LoginReq)
        token = await self.mito.users.login(request.username, request.digest(), request.retain, self.request.remote_ip)
        self.send(LoginResp(token=token))


class AuthHandler(ApiHandler):
    async def get(self) -> None:
        user = await self.user()
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(user.username)


class RedisHandler(ApiHandler):
    async def get(self) -> None:
        """The read-only Redis URL for clients, or null when the coordinator runs without Redis."""
        await self.user()
        self.send(RedisConnectionInfo(url=self.context.redis_client_url))


default_handlers = [
    (r"/health", HealthHandler),
    (r"/login", LoginHandler),
    (r"/auth", AuthHandler),
    (r"/redis", RedisHandler),
]
