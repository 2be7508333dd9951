"""The coordinator's event stream: publish/subscribe by channel name.

- ``InProcessEvents`` (default): delivery inside this coordinator process.
- ``RedisEvents`` (``--redis``): also through Redis pub/sub, so every coordinator on the same
  database sees every event (e.g. "a task became Ready" wakes long-polls on all of them). Local
  subscribers are served at once, never through the Redis round trip, so a Redis outage slows
  nothing down locally; messages that come back from Redis carry their origin and are not
  delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
Listener = Callable[[Any], None]


class InProcessEvents:
    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listeners.clear()

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(data)`` for every event on ``channel``; returns the function that stops it."""
        self._listeners[channel].add(listener)
        return lambda: self._listeners[channel].discard(listener)

    def publish(self, channel: str, data: Any = None) -> None:
        self._deliver(channel, data)

    def publish_many(self, messages: Iterable[tuple[str, Any]], raw: Iterable[tuple[str, Any, int]] = ()) -> None:
        """A batch of events, in order. ``raw`` are the reference's Redis keys (channel, value, ttl):
        nothing to do without Redis."""
        for channel, data in messages:
            self._deliver(channel, data)

    def _deliver(self, channel: str, data: Any) -> None:
        for listener in list(self._listeners.get(channel, ())):
            try:
                listener(data)
            except Exception:  # one broken listener must not starve the others
                log.exception("event listener for %s failed", channel)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[Any]]:
        """A queue that receives the events of ``channel`` while the context is open."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = self.listen(channel, queue.put_nowait)
        try:
            yield queue
        finally:
            stop()


RECHECK = {"kind": "recheck"}
"""Wakes every waiting long poll to look at the database again (events may have been missed)."""


class RedisEvents(InProcessEvents):
    RETRY_SECONDS = 2.0

    def __init__(self, url: str, channels: Iterable[str] = ()) -> None:
        """``channels`` are subscribed at start (a channel first listened to later is subscribed
        within a second, and may miss what was published meanwhile)."""
        super().__init__()
        self.redis = aioredis.from_url(url)
        self._origin = secrets.token_hex(8)
        self._pubsub = self.redis.pubsub()
        self._channels: set[str] = set(channels)
        self._subscribed: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._publishing_fails = False

    async def start(self) -> None:
        await self.redis.ping()  # fail at start, with a clear error, if Redis is not there
        if self._channels:
            await self._pubsub.subscribe(*self._channels)
            self._subscribed = set(self._channels)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._pubsub.aclose()
        await self.redis.aclose()
        await super().close()

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        self._channels.add(channel)  # the reader subscribes to it within a second
        return super().listen(channel, listener)

    def publish(self, channel: str, data: Any = None) -> None:
        self._deliver(channel, data)
        message = json.dumps({"origin": self._origin, "data": data})
        self._spawn(self.redis.publish(channel, message))

    def publish_many(self, messages: Iterable[tuple[str, Any]], raw: Iterable[tuple[str, Any, int]] = ()) -> None:
        """Delivered here at once, and sent to Redis in one pipeline: a batch costs one round trip."""
        pipeline = self.redis.pipeline(transaction=False)
        for channel, data in messages:
            self._deliver(channel, data)
            pipeline.publish(channel, json.dumps({"origin": self._origin, "data": data}))
        for channel, value, ttl in raw:
            pipeline.set(channel, value, ex=ttl)
            pipeline.publish(channel, value)
        if len(pipeline):
            self._spawn(pipeline.execute())

    def publish_raw(self, channel: str, value: Any, ttl: int) -> None:
        """The reference's Redis protocol: ``SET channel value EX ttl`` and ``PUBLISH channel value``."""
        self._spawn(self.redis.set(channel, value, ex=ttl))
        self._spawn(self.redis.publish(channel, value))

    def _spawn(self, operation: Any) -> None:
        async def run() -> None:
            try:
                await operation
            except RedisError as exc:
                if not self._publishing_fails:  # once per outage, not once per event
                    log.warning("redis: publishing fails (%s); local listeners still hear everything", exc)
                self._publishing_fails = True
            else:
                if self._publishing_fails:
                    log.warning("redis: publishing works again")
                self._publishing_fails = False

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _read(self) -> None:
        """Deliver messages published by other coordinators; resubscribe after a Redis outage, and
        then wake the local long polls: what was published meanwhile is lost."""
        interrupted = False
        while True:
            try:
                while True:
                    if self._channels - self._subscribed:  # only this task (and start) touch the pub/sub connection
                        await self._pubsub.subscribe(*(self._channels - self._subscribed))
                        self._subscribed |= self._channels
                        if interrupted:
                            interrupted = False
                            log.warning("redis pub/sub is back")
                            for channel in self._subscribed:
                                self._deliver(channel, RECHECK)
                    if not self._subscribed:
                        await asyncio.sleep(1.0)
                        continue
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    body = json.loads(message["data"])
                    if body.get("origin") != self._origin:
                        channel = message["channel"]
                        self._deliver(channel.decode() if isinstance(channel, bytes) else channel, body.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, json.JSONDecodeError) as exc:
                if not interrupted:
                    log.warning("redis pub/sub interrupted (%s); reconnecting every %.0fs", exc, self.RETRY_SECONDS)
                interrupted = True
                await asyncio.sleep(self.RETRY_SECONDS)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
                self._pubsub = self.redis.pubsub()
                self._subscribed = set()


def make_events(redis_url: str | None, channels: Iterable[str] = ()) -> InProcessEvents:
    return RedisEvents(redis_url, channels) if redis_url else InProcessEvents()


# --- the reference's Redis ACL users (section 7) ---------------------------------------------

REFERENCE_ACL_USERS = ("mitosis_worker", "mitosis_client")
"""The reference hands these out: any user could read, and any worker rewrite, every group's
``task:*`` keys. mito_lab hands out no Redis URL: users follow task states through ``/events``
(their groups only, cut when they lose access) and workers report them to the coordinator."""


async def remove_reference_acl_users(events: RedisEvents) -> None:
    """Delete the reference's ACL users, so that URLs handed out before (by the reference, or by
    an earlier mito_lab) stop working."""
    await events.redis.execute_command("ACL", "DELUSER", *REFERENCE_ACL_USERS)
