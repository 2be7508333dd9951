"""The event stream: in-process, and shared by several coordinators through Redis."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from conftest import http, start_platform
from mito_lab.server.events import InProcessEvents, RedisEvents


def test_in_process_delivery() -> None:
    async def scenario() -> list[object]:
        events = InProcessEvents()
        got: list[object] = []
        stop = events.listen("c", got.append)
        events.publish("c", 1)
        events.publish("other", 2)
        stop()
        events.publish("c", 3)
        async with events.subscribe("c") as queue:
            events.publish("c", 4)
            got.append(await queue.get())
        return got

    assert asyncio.run(scenario()) == [1, 4]


def test_redis_events_reach_other_coordinators_once(redis_url: str) -> None:
    async def scenario() -> tuple[list[object], list[object]]:
        first, second = RedisEvents(redis_url), RedisEvents(redis_url)
        here: list[object] = []
        there: list[object] = []
        first.listen("chan", here.append)
        second.listen("chan", there.append)
        await first.start()
        await second.start()
        try:
            for _ in range(50):  # the readers subscribe within a second of starting
                if (await first.redis.pubsub_numsub("chan"))[0][1] == 2:
                    break
                await asyncio.sleep(0.1)
            first.publish("chan", {"n": 1})
            for _ in range(50):
                if there:
                    break
                await asyncio.sleep(0.1)
        finally:
            await first.close()
            await second.close()
        return here, there

    here, there = asyncio.run(scenario())
    assert here == [{"n": 1}]  # delivered locally once, not again when it comes back from Redis
    assert there == [{"n": 1}]


def test_two_coordinators_share_dispatch_through_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    second = start_platform(tmp_path / "b", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    try:
        assert first.api("GET", "/redis").json["url"] is None  # no Redis URL is handed out
        token = first.api("POST", "/workers", {"groups": []}).json["token"]
        fetched: list[object] = []
        waiter = threading.Thread(
            target=lambda: fetched.append(http("GET", f"{first.url}/workers/tasks?wait=60", token=token).json)
        )
        waiter.start()
        task = second.api("POST", "/tasks", {"task_spec": {"args": ["true"]}}).json["uuid"]
        waiter.join(30)
        assert not waiter.is_alive() and fetched[0]["uuid"] == task  # type: ignore[index]
    finally:
        first.stop()
        second.stop()
