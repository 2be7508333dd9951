"""Back-off after failed logins, per username and per client address.

A name or an address gets a few failures free; after that each failure makes it wait before the
next attempt (1 s, then twice as long each time, at most ``MAX_DELAY_SECONDS``), and an attempt
during the wait is answered 429 with ``Retry-After`` without its password being checked. Failures
are forgotten ``FORGET_SECONDS`` after the last one; a successful login clears its username's
failures (not its address's: one's own account must not reset a guessing address).

Unknown usernames are counted exactly as known ones, so the back-off reveals nothing more than the
answer does. The counts live in this coordinator's memory (bounded); when Redis is configured they
are also kept there (``mito:login:*``, expiring with them), so every coordinator sharing it sees
every failure. Redis being unreachable only leaves each coordinator with its own counts.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.exceptions import RedisError

from mito_lab.server.errors import TooManyLogins
from mito_lab.server.events import InProcessEvents, RedisEvents

log = logging.getLogger(__name__)

FREE_FAILURES_PER_USER = 5
FREE_FAILURES_PER_ADDRESS = 20  # a lab behind one NAT address shares it
FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 300.0
FORGET_SECONDS = 900
KEPT_IN_MEMORY = 100_000
"""The most names and addresses remembered here: a spray of made-up names cannot grow memory."""


@dataclass
class Failures:
    count: int
    last: float  # time.time() of the last failure (wall clock: shared with other coordinators)

    def wait(self, free: int, moment: float) -> float:
        """Seconds until the next attempt is allowed."""
        if self.count < free or moment - self.last >= FORGET_SECONDS:
            return 0.0
        delay = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (self.count - free))
        return max(0.0, self.last + delay - moment)


class LoginBackoff:
    def __init__(self, events: InProcessEvents) -> None:
        self._redis = events.redis if isinstance(events, RedisEvents) else None
        self._known: OrderedDict[str, Failures] = OrderedDict()

    @staticmethod
    def _keys(username: str, address: str | None) -> list[tuple[str, int]]:
        return [(f"mito:login:user:{username}", FREE_FAILURES_PER_USER), (f"mito:login:address:{address}", FREE_FAILURES_PER_ADDRESS)]

    async def check(self, username: str, address: str | None) -> None:
        """Raise ``TooManyLogins`` while the name or the address must wait."""
        moment = time.time()
        keys = self._keys(username, address)
        wait = max(failures.wait(free, moment) for failures, (_, free) in zip(await self._read([k for k, _ in keys]), keys, strict=True))
        if wait > 0:
            raise TooManyLogins(math.ceil(wait))

    async def failed(self, username: str, address: str | None) -> None:
        moment = time.time()
        keys = self._keys(username, address)
        counts = []
        for key, free in keys:
            failures = self._known.pop(key, None) or Failures(0, moment)
            if moment - failures.last >= FORGET_SECONDS:
                failures.count = 0
            failures.count, failures.last = failures.count + 1, moment
            self._known[key] = failures
            counts.append((failures, free))
        while len(self._known) > KEPT_IN_MEMORY:
            self._known.popitem(last=False)
        if self._redis is not None:
            try:
                pipeline = self._redis.pipeline(transaction=True)
                for key, _ in keys:
                    pipeline.hincrby(key, "count", 1).hset(key, "last", moment).expire(key, FORGET_SECONDS)
                answers = await pipeline.execute()
                counts = [(Failures(max(int(answers[3 * i]), mine.count), moment), free) for i, (mine, free) in enumerate(counts)]
            except RedisError as exc:
                log.warning("login back-off: Redis unreachable (%s); counting this coordinator's failures only", exc)
        waits = [failures.wait(free, moment) for failures, free in counts]
        log.warning(
            "login failed for %r from %s (%d failures for the name, %d from the address)%s",
            username, address, counts[0][0].count, counts[1][0].count,
            f"; further attempts refused for {math.ceil(max(waits))} s" if max(waits) > 0 else "",
        )

    async def succeeded(self, username: str) -> None:
        key, _ = self._keys(username, None)[0]
        self._known.pop(key, None)
        if self._redis is not None:
            try:
                await self._redis.delete(key)
            except RedisError as exc:
                log.warning("login back-off: Redis unreachable (%s)", exc)

    async def _read(self, keys: list[str]) -> list[Failures]:
        found = [self._known.get(key) or Failures(0, 0.0) for key in keys]
        if self._redis is None:
            return found
        try:
            pipeline = self._redis.pipeline(transaction=False)
            for key in keys:
                pipeline.hmget(key, "count", "last")
            shared = await pipeline.execute()
        except RedisError as exc:
            log.warning("login back-off: Redis unreachable (%s); counting this coordinator's failures only", exc)
            return found
        return [
            Failures(int(count), float(last)) if count is not None and int(count) > mine.count else mine
            for mine, (count, last) in zip(found, shared, strict=True)
        ]
