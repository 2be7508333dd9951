"""The coordinator's event stream (``GET /events``, a WebSocket) as the SDK sees it: one connection
per client, shared by every live view (task handles, dashboards), reconnected with backoff.

After a reconnection the listeners get ``{"kind": "resync"}``: events may have been missed, so a
view re-reads what it shows. That includes a socket the coordinator closed on purpose: a reader too
slow to keep up (1013), a coordinator stopping (1001), a token that lost its validity (1008; the
reconnection is then refused). When the coordinator refuses the token the listeners get
``{"kind": "closed", "msg": ...}`` and the stream stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from mito_lab.client.http import HttpSession

log = logging.getLogger(__name__)
Event = dict[str, Any]
Listener = Callable[[Event], None]
PING_SECONDS = 20.0
MAX_BACKOFF_SECONDS = 30.0
# How long a new listener waits for the first connection before going on without it (a view then
# still works, it just is not live until the stream connects).
CONNECT_WAIT_SECONDS = 5.0
CLOSE_WAIT_SECONDS = 2.0


class EventStream:
    def __init__(self, session: HttpSession) -> None:
        self.session = session
        self._listeners: list[Listener] = []
        self._runner: asyncio.Task[None] | None = None
        self._connection: WebSocketClientConnection | None = None
        self._connected = asyncio.Event()
        self._closing = False

    @property
    def url(self) -> str:
        # http -> ws, https -> wss; events in batches (a coordinator before them ignores the option)
        return "ws" + self.session.url("events")[4:] + "?batch=1"

    async def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns the function that stops it.
        Waits (briefly) for the connection, so that what the caller reads next is not older than
        the events it will be told about."""
        self._listeners.append(listener)
        if self._runner is None or self._runner.done():
            self._connected.clear()
            self._closing = False
            self._runner = asyncio.ensure_future(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_SECONDS)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return stop

    def _dispatch(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one broken view must not silence the others
                log.exception("an event listener failed on %s", event.get("kind"))

    async def _connect(self) -> WebSocketClientConnection:
        request = HTTPRequest(self.url, headers={"Authorization": f"Bearer {self.session.token}"})
        return await websocket_connect(request, ping_interval=PING_SECONDS)

    async def _run(self) -> None:
        delay, reconnecting = 0.5, False
        while True:
            try:
                self._connection = await self._connect()
            except (HTTPClientError, OSError) as exc:
                if isinstance(exc, HTTPClientError) and exc.code in (401, 403):
                    self._dispatch({"kind": "closed", "msg": f"the coordinator refused the event stream ({exc.code})"})
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            delay = 0.5
            self._connected.set()
            if reconnecting:
                self._dispatch({"kind": "resync"})
            reconnecting = True
            while (message := await self._connection.read_message()) is not None:
                if isinstance(message, str):
                    events = json.loads(message)
                    for event in events if isinstance(events, list) else (events,):
                        self._dispatch(event)
            self._connected.clear()
            if self._closing:
                return
            log.info("the event stream closed (%s: %s); reconnecting", self._connection.close_code, self._connection.close_reason)
            self._connection.close()  # the coordinator closed it: this lets go of it

    async def aclose(self) -> None:
        """Close the connection with the WebSocket handshake, so no socket is left open."""
        self._closing = True
        runner, connection = self._runner, self._connection
        if connection is not None:
            connection.close()  # the reader sees the end once the server answers
        if runner is not None and not runner.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(runner), CLOSE_WAIT_SECONDS)
        if connection is not None and connection.protocol is not None:
            connection.protocol.stream.close()  # the server did not answer in time
        self.close()

    def close(self) -> None:
        """Stop at once (no handshake)."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            self._runner = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
