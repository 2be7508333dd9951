"""``/events``: a WebSocket that streams task and worker events to a user, only of their groups
(the rules, bounds and revocation are ``services/streams.py``'s)."""

from __future__ import annotations

import json
from typing import Any

from tornado.web import stream_request_body
from tornado.websocket import WebSocketHandler

from mito_lab.server.db.models import User
from mito_lab.server.errors import ApiError, InvalidToken, ShuttingDown
from mito_lab.server.handlers.base import SMALL_JSON_BODY, query_argument
from mito_lab.server.services.streams import Stream


@stream_request_body  # else Tornado would read a body, up to the server's 1 GiB, into memory first
class EventsHandler(WebSocketHandler):
    """Authenticate with ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (browsers cannot set
    headers on a WebSocket). Each message is one JSON event (see ``services/activity.py``), or with
    ``?batch=1`` a JSON array of the events that waited (see ``services/streams.py``)."""

    stream: Stream | None = None
    _admitted: tuple[User, str, set[str]]

    def prepare(self) -> None:
        # an upgrade request has no business with a body: past this Tornado cuts the connection
        self.request.connection.set_max_body_size(SMALL_JSON_BODY)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        """Dropped (see ``prepare``)."""

    @property
    def mito(self) -> Any:
        return self.settings["mito"]

    async def get(self, *args: Any, **kwargs: Any) -> None:
        header = self.request.headers.get("Authorization", "")
        token = header.partition(" ")[2] if header.lower().startswith("bearer ") else query_argument(self, "token", "")
        streams = self.mito.streams
        try:
            if self.mito.context.closing:
                raise ShuttingDown()
            if not token:
                raise InvalidToken()
            user = await self.mito.users.authenticate(token)
            groups = await streams.groups_of(user)
            streams.admit(user)  # no await from here to open(): the limit cannot be overrun
        except ApiError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"msg": exc.msg}))
            return
        self._admitted = (user, token, groups)
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return True  # authentication is by token, never by cookie, so any origin may connect

    def open(self, *args: Any, **kwargs: Any) -> None:
        user, token, groups = self._admitted
        self.stream = self.mito.streams.open(self, user, token, groups, batched=query_argument(self, "batch", "0") == "1")

    def on_message(self, message: str | bytes) -> None:
        """The stream is one-way; messages from the client are ignored."""

    def on_close(self) -> None:
        if self.stream is not None:
            self.mito.streams.closed(self.stream)


default_handlers = [
    (r"/events", EventsHandler),
]
