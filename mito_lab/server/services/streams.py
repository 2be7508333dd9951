"""The ``/events`` streams: which events each open socket receives, how they reach it without
holding up whoever published them, and when a socket ends (README, Security notes).

- Fan-out is off the publisher's path: the bus listener only appends an event to an inbox. One
  pump task encodes each event once, queues the text (shared, not copied) for the sockets of its
  group(s), and writes to the sockets in slices of at most ``SLICE_SECONDS``, yielding to the loop
  between slices: a batch's events for 500 sockets never hold up a request.
- Each socket has a bounded queue. Nothing more is written to a socket while its last write still
  waits for the kernel to take it (its reader does not keep up), so what the coordinator holds for
  a socket is its queue, never a growing write buffer; once ``events_queue_limit`` events wait,
  the socket is closed with 1013 (try again later) and the client reconnects and resyncs.
- A socket opened with ``?batch=1`` gets what waits for it as one message, a JSON array of events
  (oldest first), instead of a message per event: a reader of thousands of events a second (a
  notebook's dashboard) parses a message per burst, not per event.
- A user opens at most ``events_sockets_per_user`` sockets on one coordinator (429 past it).
- Access is checked again when the bus says a user's access changed (``ACCESS``) and every
  ``ACCESS_REFRESH_SECONDS`` anyway (for other coordinators without Redis, and tokens expiring): a
  token no longer valid (password changed, signed in again without retain, user locked or deleted,
  token expired) closes the socket with 1008 and the reason; a group left stops that group's
  events, the ones already queued included; a group joined starts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import orjson
from tornado.websocket import WebSocketClosedError

from mito_lab.server.db.models import User
from mito_lab.server.errors import ApiError, InvalidToken, TooManyStreams, WrongCredentials
from mito_lab.server.events import RECHECK
from mito_lab.server.services.activity import ACCESS, EVENTS
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import GroupService
from mito_lab.server.services.users import UserService

log = logging.getLogger(__name__)

ACCESS_REFRESH_SECONDS = 10.0
SLICE_SECONDS = 0.01  # the pump's longest hold on the loop
WRITES_PER_TURN = 64  # a socket's messages written before the next socket's turn
BATCH_LIMIT = 1000  # events in one message of a batched socket
# WebSocket close codes (RFC 6455 7.4.1, IANA registry)
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125, with the code


class Socket(Protocol):
    """What a stream writes to: the ``/events`` handler (Tornado's ``WebSocketHandler``)."""

    def write_message(self, message: bytes) -> Awaitable[None]: ...  # UTF-8 JSON, sent as a text frame

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


@dataclass(eq=False)
class Stream:
    """One open ``/events`` socket of a user, with the token it was opened with."""

    socket: Socket
    username: str
    token: str
    groups: set[str]
    batched: bool = False  # waiting events go as one JSON array
    queue: deque[tuple[tuple[str, ...], bytes]] = field(default_factory=deque)  # (the event's groups, its JSON)
    scheduled: bool = False  # in the pump's list of sockets to write to
    writing: bool = False  # its last write waits for the kernel
    checking: int = 0  # access checks under way: nothing is written meanwhile
    closed: bool = False

    def sees(self, groups: tuple[str, ...]) -> bool:
        return any(group in self.groups for group in groups)


def close_reason(text: str) -> str:
    return text.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


def why_ended(refusal: ApiError) -> str:
    """Why a stream's token no longer authenticates, in words its user can act on."""
    if isinstance(refusal, WrongCredentials):
        return "the token was revoked (password changed, or signed in again without retain)"
    if isinstance(refusal, InvalidToken):
        return "the token expired or is invalid"
    return refusal.msg  # e.g. "Authentication error: Permission denied: user ann is Locked"


def _retrieve(future: asyncio.Future[None]) -> None:
    """A write that failed because the socket closed: the stream is dropped elsewhere."""
    if not future.cancelled():
        future.exception()


class EventStreamService:
    def __init__(self, context: Context, users: UserService, groups: GroupService) -> None:
        self.context = context
        self._users = users
        self._groups = groups
        self._of_user: dict[str, set[Stream]] = defaultdict(set)
        self._of_group: dict[str, set[Stream]] = defaultdict(set)
        self._inbox: deque[dict[str, Any]] = deque()
        self._ready: deque[Stream] = deque()
        self._wake = asyncio.Event()
        self._stop_listening: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def limit(self) -> int:
        return self.context.config.events_queue_limit

    def start(self) -> None:
        events = self.context.events
        self._stop_listening = [events.listen(EVENTS, self._received), events.listen(ACCESS, self._access_changed)]
        self._spawn(self._pump())
        self._spawn(self._refresh())

    def close(self) -> None:
        """Stop, and end every socket with 1001 (the clients reconnect to another coordinator, or later)."""
        for stop in self._stop_listening:
            stop()
        for task in self._tasks:
            task.cancel()
        for streams in list(self._of_user.values()):
            for stream in list(streams):
                self._drop(stream, GOING_AWAY, "coordinator is shutting down")

    # --- opening and closing ------------------------------------------------------------------

    async def groups_of(self, user: User) -> set[str]:
        return set(await self._groups.my_groups(user))

    def admit(self, user: User) -> None:
        """Refuse a socket past the user's limit. Called with no await between it and ``open``."""
        limit = self.context.config.events_sockets_per_user
        if len(self._of_user.get(user.username, ())) >= limit:
            raise TooManyStreams(user.username, limit)

    def open(self, socket: Socket, user: User, token: str, groups: set[str], batched: bool = False) -> Stream:
        stream = Stream(socket, user.username, token, set(groups), batched)
        self._of_user[stream.username].add(stream)
        for group in stream.groups:
            self._of_group[group].add(stream)
        return stream

    def closed(self, stream: Stream) -> None:
        """The socket is gone (or going): forget the stream; idempotent."""
        if stream.closed:
            return
        stream.closed = True
        stream.queue.clear()
        _discard(self._of_user, stream.username, stream)
        for group in stream.groups:
            _discard(self._of_group, group, stream)

    def _drop(self, stream: Stream, code: int, reason: str) -> None:
        if stream.closed:
            return
        log.info("closing an event stream of %s: %s", stream.username, reason)
        self.closed(stream)
        stream.socket.close(code, close_reason(reason))

    # --- fan-out ------------------------------------------------------------------------------

    def _received(self, event: dict[str, Any]) -> None:
        """The bus listener, called on the publisher's path: it only queues."""
        if "group" in event or "groups" in event:
            self._inbox.append(event)
            self._wake.set()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox or self._ready:
                deadline = loop.time() + SLICE_SECONDS
                try:
                    self._distribute(loop, deadline)
                    self._write(loop, deadline)
                except Exception:  # a bug must not silence every stream for good
                    log.exception("the event fan-out failed")
                await asyncio.sleep(0)  # the rest waits for the next slice: requests go first

    def _distribute(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        while self._inbox:
            event = self._inbox.popleft()
            group = event.get("group")
            groups = (group,) if group is not None else tuple(event.get("groups") or ())
            targets = {stream for name in groups for stream in self._of_group.get(name, ())}
            if targets:
                entry = (groups, orjson.dumps(event))  # made once and shared: a queue holds a reference per event
                for stream in targets:
                    self._queue(stream, entry)
            if loop.time() >= deadline:
                return

    def _queue(self, stream: Stream, entry: tuple[tuple[str, ...], bytes]) -> None:
        if stream.closed:
            return
        if len(stream.queue) >= self.limit:
            self._drop(stream, TRY_AGAIN_LATER, f"too slow: {self.limit} events waited unread; reconnect and read again")
            return
        stream.queue.append(entry)
        self._schedule(stream)

    def _schedule(self, stream: Stream) -> None:
        if stream.queue and not (stream.scheduled or stream.writing or stream.checking or stream.closed):
            stream.scheduled = True
            self._ready.append(stream)
            self._wake.set()

    def _write(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        while self._ready:
            stream = self._ready.popleft()
            stream.scheduled = False
            if stream.closed or stream.checking:
                continue  # a check reschedules the stream when it is done
            last: Awaitable[None] | None = None
            try:
                for text in self._messages(stream):
                    last = stream.socket.write_message(text)
                    last.add_done_callback(_retrieve)  # type: ignore[attr-defined]
            except WebSocketClosedError:
                self.closed(stream)
                continue
            if last is not None:
                stream.writing = True
                last.add_done_callback(partial(self._written, stream))  # type: ignore[attr-defined]
            else:
                self._schedule(stream)
            if loop.time() >= deadline:
                return

    @staticmethod
    def _messages(stream: Stream) -> list[bytes]:
        """This turn's messages of ``stream``: the events it may still see, taken off its queue."""
        taken = min(BATCH_LIMIT if stream.batched else WRITES_PER_TURN, len(stream.queue))
        texts = [text for groups, text in (stream.queue.popleft() for _ in range(taken))
                 if stream.sees(groups)]  # not if the group was left since it was queued
        if stream.batched and texts:
            return [b"[" + b",".join(texts) + b"]"]
        return texts

    def _written(self, stream: Stream, future: asyncio.Future[None]) -> None:
        stream.writing = False
        if future.cancelled() or future.exception() is not None:
            self.closed(stream)
        else:
            self._schedule(stream)

    # --- access ---------------------------------------------------------------------------------

    def _access_changed(self, payload: dict[str, Any]) -> None:
        if payload == RECHECK:  # after a Redis outage: what changed meanwhile is unknown
            streams = [stream for streams in self._of_user.values() for stream in streams]
        else:
            streams = list(self._of_user.get(payload.get("user", ""), ()))
        joined = payload.get("joined")
        for stream in streams:
            if joined and not stream.closed:  # what was published since the commit is not missed
                stream.groups.add(joined)
                self._of_group[joined].add(stream)
            self._spawn(self._check(stream))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_REFRESH_SECONDS)
            for stream in [stream for streams in self._of_user.values() for stream in streams]:
                await self._check(stream)

    async def _check(self, stream: Stream) -> None:
        """Is the stream's token still valid, and which groups does its user now read?"""
        if stream.closed:
            return
        stream.checking += 1
        try:
            user = await self._users.authenticate(stream.token)
            groups = await self.groups_of(user)
        except ApiError as exc:
            self._drop(stream, POLICY_VIOLATION, f"access ended: {why_ended(exc)}")
            return
        except Exception:  # e.g. the database restarting: looked at again at the next refresh
            log.exception("checking the access of an event stream of %s failed", stream.username)
            groups = stream.groups
        finally:
            stream.checking -= 1
        if not stream.closed:
            for group in stream.groups - groups:
                _discard(self._of_group, group, stream)
            for group in groups - stream.groups:
                self._of_group[group].add(stream)
            stream.groups = groups
        self._schedule(stream)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _discard(index: dict[str, set[Stream]], key: str, stream: Stream) -> None:
    streams = index.get(key)
    if streams is not None:
        streams.discard(stream)
        if not streams:
            del index[key]
