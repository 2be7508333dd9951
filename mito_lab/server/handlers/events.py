"""``/events``: a WebSocket that streams task and worker events to a user, only of their groups."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import sqlalchemy as sa
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from mito_lab.server.db.models import Group, UserGroup
from mito_lab.server.errors import ApiError, InvalidToken, ShuttingDown
from mito_lab.server.services.activity import EVENTS

log = logging.getLogger(__name__)
MEMBERSHIP_REFRESH_SECONDS = 10.0


class EventsHandler(WebSocketHandler):
    """Authenticate with ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (browsers cannot set
    headers on a WebSocket). Each message is one JSON event; see ``services/activity.py``."""

    _stop_listening = None
    _refresher: asyncio.Task[None] | None = None

    @property
    def mito(self) -> Any:
        return self.settings["mito"]

    async def get(self, *args: Any, **kwargs: Any) -> None:
        header = self.request.headers.get("Authorization", "")
        token = header.partition(" ")[2] if header.lower().startswith("bearer ") else self.get_query_argument("token", "")
        try:
            if self.mito.context.closing:
                raise ShuttingDown()
            if not token:
                raise InvalidToken()
            self.user = await self.mito.users.authenticate(token)
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"msg": exc.msg}))
            return
        self.groups: set[str] = await self._my_groups()
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return True  # authentication is by token, never by cookie, so any origin may connect

    async def _my_groups(self) -> set[str]:
        async with self.mito.context.db.read() as session:
            rows = await session.scalars(
                sa.select(Group.group_name).join(UserGroup, UserGroup.group_id == Group.id).where(UserGroup.user_id == self.user.id)
            )
            return set(rows.all())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            self.groups = await self._my_groups()

    def open(self, *args: Any, **kwargs: Any) -> None:
        self._stop_listening = self.mito.context.events.listen(EVENTS, self._forward)
        self._refresher = asyncio.ensure_future(self._refresh())

    def _forward(self, event: dict[str, Any]) -> None:
        visible = event.get("group") in self.groups or bool(self.groups.intersection(event.get("groups", ())))
        if visible:
            try:
                self.write_message(json.dumps(event))
            except WebSocketClosedError:
                self.on_close()

    def on_message(self, message: str | bytes) -> None:
        """The stream is one-way; messages from the client are ignored."""

    def on_close(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None


default_handlers = [
    (r"/events", EventsHandler),
]
