"""No client can stall the coordinator, and an open event stream ends with its user's access
(issue 19): bounded /events fan-out (queues, sockets per user, slow readers dropped), revocation
of open streams, body limits by route, a bounded batch committed in chunks, HTTP timeouts.

Each test runs a real coordinator process and talks to it over loopback, with plain sockets where
the point is a client that misbehaves (never reads, sends half a request)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from conftest import ADMIN, Platform, http, start_platform
from mito_lab.client.api import AsyncClient
from mito_lab.server.handlers.base import SMALL_JSON_BODY
from mito_lab.server.services.streams import ACCESS_REFRESH_SECONDS
from mito_lab.wire import MAX_BATCH_TASKS, SubmitTaskReq, TaskSpec, md5_password

MB = 1024 * 1024



# --- helpers -------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def address(platform: Platform) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(platform.url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def raw_event_socket(platform: Platform, token: str) -> tuple[int, bytes, socket.socket]:
    """Open ``/events`` by hand and read only the handshake's answer: (status, head, socket). The
    socket then never reads again unless the test does, and takes little (a small receive buffer)."""
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.settimeout(30)
    connection.connect(address(platform))
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall(
        f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        byte = connection.recv(1)
        assert byte, f"the coordinator closed the handshake: {head!r}"
        head += byte
    status = int(head.split(b" ", 2)[1])
    return status, head, connection


def closed_within(connection: socket.socket, seconds: float) -> bool:
    """Read (and drop) whatever comes until the peer closes; False if it is still open after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        connection.settimeout(remaining)
        try:
            if not connection.recv(1 << 20):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def events_url(platform: Platform, token: str) -> str:
    return f"ws{platform.url[4:]}/events?token={token}"


async def next_message(connection: WebSocketClientConnection, seconds: float) -> dict[str, Any] | None:
    """The next event, or None once the coordinator closed the socket."""
    message = await asyncio.wait_for(connection.read_message(), seconds)
    return None if message is None else json.loads(message)


async def until_closed(connection: WebSocketClientConnection, seconds: float) -> list[dict[str, Any]]:
    """The events that come until the coordinator closes the socket (its code and reason are then
    on ``connection``)."""
    events = []
    while (event := await next_message(connection, seconds)) is not None:
        events.append(event)
    connection.close()  # already closed: this only lets go of it
    return events


async def close_quietly(connection: WebSocketClientConnection) -> None:
    connection.close()
    with contextlib.suppress(TimeoutError):
        while await asyncio.wait_for(connection.read_message(), 10) is not None:
            pass


def add_members(platform: Platform, group: str, names: list[str], role: str = "Read") -> None:
    answer = platform.api("PUT", f"/groups/{group}/users", {"relations": {name: role for name in names}})
    assert answer.status == 200, answer.body


def submit(platform: Platform, group: str, user: str = ADMIN[0]) -> str:
    answer = platform.api("POST", "/tasks", {"group_name": group, "task_spec": {"args": ["true"]}}, user=user)
    assert answer.status == 200, answer.body
    return answer.json["uuid"]


def trivial_batch(count: int) -> dict[str, Any]:
    return {"tasks": [{"task_spec": {"args": ["true"]}} for _ in range(count)]}


# --- 1. revocation reaches open event streams -------------------------------------------------


def test_event_streams_end_when_their_users_access_ends(platform: Platform) -> None:
    """Removed from a group: that group's events stop at once (those queued too), the socket stays
    for the others. Locked, deleted, password changed or reset, signed in again without retain:
    the socket is closed with 1008 and says why, at once rather than at the periodic re-check."""
    assert platform.api("POST", "/groups", {"group_name": "lab"}).status == 200
    people = ["ann", "bob", "cat", "dan", "eve", "fay"]
    tokens = {name: platform.add_user(name) for name in people}
    add_members(platform, "lab", people)

    async def scenario() -> None:
        streams = {name: await websocket_connect(events_url(platform, tokens[name])) for name in people}
        await asyncio.to_thread(submit, platform, "lab")  # the streams are live: each sees it
        for name in people:
            assert (await next_message(streams[name], 30) or {}).get("group") == "lab"
        changed = time.monotonic()
        changes = [
            ("DELETE", "/groups/lab/users?users=ann", None),
            ("POST", "/admin/users/bob/state", {"state": "Locked"}),
            ("DELETE", "/admin/users/cat", None),
            ("POST", "/admin/users/eve/password", {"new_md5_password": md5_password("new-eve")}),
        ]
        for method, path, body in changes:
            answer = await asyncio.to_thread(platform.api, method, path, body)
            assert answer.status == 200, (path, answer.body)
        own = {"old_md5_password": md5_password("dan-password"), "new_md5_password": md5_password("new-dan")}
        assert (await asyncio.to_thread(platform.api, "POST", "/users/dan/password", own, None, tokens["dan"])).status == 200
        relogin = {"username": "fay", "password": "fay-password", "retain": False}
        assert (await asyncio.to_thread(http, "POST", f"{platform.url}/login", relogin)).status == 200

        for name, says in (("bob", "bob is Locked"), ("cat", "cat is Deleted"),
                           ("dan", "revoked"), ("eve", "revoked"), ("fay", "revoked")):
            assert await until_closed(streams[name], 30) == []
            assert streams[name].close_code == 1008, (name, streams[name].close_code)
            assert streams[name].close_reason and says in streams[name].close_reason, (name, streams[name].close_reason)
        # told by the bus, not found by the periodic re-check
        assert time.monotonic() - changed < ACCESS_REFRESH_SECONDS

        # ann: the lab's events stop, her own group's go on, on the same socket
        await asyncio.to_thread(submit, platform, "lab")
        own_task = await asyncio.to_thread(submit, platform, "ann", "ann")
        event = await next_message(streams["ann"], 30)
        assert event is not None and event["group"] == "ann" and event["uuid"] == own_task, event
        # and joining a group starts its events
        await asyncio.to_thread(add_members, platform, "lab", ["ann"])
        lab_task = await asyncio.to_thread(submit, platform, "lab")
        while (event := await next_message(streams["ann"], 30)) is not None and event.get("uuid") != lab_task:
            pass
        assert event is not None and event["group"] == "lab"
        await close_quietly(streams["ann"])

    asyncio.run(scenario())


def test_access_changes_reach_streams_on_other_coordinators_through_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    first = start_platform(tmp_path / "a", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules")
    keys = tmp_path / "a" / "coordinator-data"  # one key pair: a token of one coordinator opens the other
    second = start_platform(
        tmp_path / "b", "--db", pg_url, "--redis", redis_url, "--redis-skip-acl-rules",
        "--access-token-private-path", str(keys / "private.pem"), "--access-token-public-path", str(keys / "public.pem"),
    )
    try:
        token = first.add_user("gus")

        async def scenario() -> tuple[int | None, str | None, float]:
            stream = await websocket_connect(events_url(second, token))
            locked = time.monotonic()
            answer = await asyncio.to_thread(first.api, "POST", "/admin/users/gus/state", {"state": "Locked"})
            assert answer.status == 200, answer.body
            await until_closed(stream, 30)
            return stream.close_code, stream.close_reason, time.monotonic() - locked

        code, reason, took = asyncio.run(scenario())
        assert code == 1008 and reason and "gus is Locked" in reason
        assert took < ACCESS_REFRESH_SECONDS  # carried by Redis, not found by the periodic re-check
    finally:
        first.stop()
        second.stop()


# --- 2. fan-out off the request path, bounded queues, sockets per user ------------------------


def test_event_sockets_per_user_are_capped(sqlite_platform: Platform) -> None:
    platform = sqlite_platform
    token, other = platform.add_user("hal"), platform.add_user("ida")
    opened = [raw_event_socket(platform, token) for _ in range(16)]
    try:
        assert [status for status, _, _ in opened] == [101] * 16
        status, head, refused = raw_event_socket(platform, token)
        opened.append((status, head, refused))
        assert status == 429
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
        body = b""
        while len(body) < length:
            body += refused.recv(4096)
        assert "hal already has 16 open /events sockets" in json.loads(body)["msg"]
        opened.pop()[2].close()
        extra_status, _, theirs = raw_event_socket(platform, other)  # the limit is per user
        theirs.close()
        assert extra_status == 101
        opened.pop()[2].close()  # a socket closed frees its place
        deadline = time.monotonic() + 10
        while (again := raw_event_socket(platform, token))[0] != 101 and time.monotonic() < deadline:
            again[2].close()
            time.sleep(0.1)
        opened.append(again)
        assert again[0] == 101
    finally:
        for _, _, connection in opened:
            connection.close()


def test_a_batch_and_health_answer_promptly_with_hundreds_of_sockets_open(sqlite_platform: Platform) -> None:
    """320 sockets (20 users x 16) that read nothing: a 1,000-task batch used to wait for 320,000
    socket writes (tens of seconds, /health stalled as long); its events are now written off the
    request path. One more socket that does read gets the events as they come, in order."""
    platform = sqlite_platform
    users = [f"user{index}" for index in range(20)]
    tokens = [platform.add_user(name) for name in users]
    add_members(platform, ADMIN[0], users)
    idle = [raw_event_socket(platform, token) for token in tokens for _ in range(16)]
    assert {status for status, _, _ in idle} == {101}
    try:

        async def scenario() -> tuple[float, list[float], list[str]]:
            reader = await websocket_connect(events_url(platform, platform.token()))
            probes: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    assert http("GET", f"{platform.url}/health").status == 200
                    probes.append(time.monotonic() - started)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe)
            prober.start()
            try:
                started = time.monotonic()
                answer = await asyncio.to_thread(platform.api, "POST", "/tasks/submit", trivial_batch(1000))
                took = time.monotonic() - started
                assert answer.status == 200
                uuids = [item["Ok"]["uuid"] for item in answer.json["results"]][:100]
                seen: list[str] = []
                while len(seen) < len(uuids):
                    event = await next_message(reader, 60)
                    assert event is not None, "the reading socket was closed"
                    if event.get("kind") == "task":
                        seen.append(event["uuid"])
            finally:
                stop.set()
                await asyncio.to_thread(prober.join)
            await close_quietly(reader)
            return took, probes, seen if seen == uuids else ["out of order"]

        took, probes, seen = asyncio.run(scenario())
    finally:
        for _, _, connection in idle:
            connection.close()
    assert took < 5, f"the batch took {took:.1f} s to answer"
    assert probes and max(probes) < 2, f"/health took up to {max(probes):.1f} s"
    assert seen != ["out of order"]


def test_sockets_that_never_read_are_dropped_and_memory_stays_bounded(tmp_path: Path) -> None:
    """30 sockets that never read, 20,000 events: the coordinator used to buffer every one for
    every socket (+500 MB and more); now each socket's queue is bounded (here to 10,000 events, a
    fifth of the default, to need fewer events), and they are closed."""
    platform = start_platform(tmp_path / "platform", env={"MITO_EVENTS_QUEUE_LIMIT": "10000"})
    idle: list[tuple[int, bytes, socket.socket]] = []
    try:
        tokens = [platform.add_user(name) for name in ("jo", "kim")]
        add_members(platform, ADMIN[0], ["jo", "kim"])
        batch = trivial_batch(MAX_BATCH_TASKS)
        assert platform.api("POST", "/tasks/submit", batch).status == 200  # the heap a batch needs, before measuring
        idle = [raw_event_socket(platform, tokens[index % 2]) for index in range(30)]
        before = rss_mb(platform.coordinator.pid)
        peak = before
        for _ in range(2):
            assert platform.api("POST", "/tasks/submit", batch).status == 200
            peak = max(peak, rss_mb(platform.coordinator.pid))
        deadline = time.monotonic() + 60
        closed = [closed_within(connection, max(0.1, deadline - time.monotonic())) for _, _, connection in idle]
        peak = max(peak, rss_mb(platform.coordinator.pid))
        log = platform.log
    finally:
        for _, _, connection in idle:
            connection.close()
        platform.stop()
    assert all(closed), f"{closed.count(False)} of 30 sockets that never read are still open"
    assert peak - before < 100, f"the coordinator grew from {before:.0f} MB to {peak:.0f} MB"
    assert "too slow: 10000 events waited unread" in log


def test_a_reader_that_falls_behind_is_closed_with_1013_and_the_sdk_resyncs(tmp_path: Path) -> None:
    """With room for 5 queued events, a burst of 50 leaves any reader behind: the raw socket is
    closed with 1013 and a reason; the SDK's stream reconnects, tells its listeners to resync, and
    goes on delivering."""
    platform = start_platform(tmp_path / "platform", env={"MITO_EVENTS_QUEUE_LIMIT": "5"})
    try:

        async def scenario() -> tuple[int | None, str | None, list[dict[str, Any]]]:
            raw = await websocket_connect(events_url(platform, platform.token()))
            client = AsyncClient(platform.url, platform.token(), ADMIN[0])
            heard: list[dict[str, Any]] = []
            resynced = asyncio.Event()

            def listener(event: dict[str, Any]) -> None:
                heard.append(event)
                if event.get("kind") == "resync":
                    resynced.set()

            await client.listen(listener)
            try:
                assert (await asyncio.to_thread(platform.api, "POST", "/tasks/submit", trivial_batch(50))).status == 200
                await until_closed(raw, 30)
                await asyncio.wait_for(resynced.wait(), 30)
                after = await asyncio.to_thread(submit, platform, ADMIN[0])
                deadline = time.monotonic() + 30
                while not any(e.get("uuid") == after for e in heard) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                await client.aclose()
            return raw.close_code, raw.close_reason, [e for e in heard if e.get("uuid") == after]

        code, reason, after = asyncio.run(scenario())
    finally:
        platform.stop()
    assert code == 1013 and reason and "too slow" in reason
    assert after, "the SDK's stream did not deliver events after it resynced"


# --- 3. body limits by route, before parsing and authentication ------------------------------


def test_oversized_bodies_to_small_routes_answer_413_quickly_and_cost_no_memory(sqlite_platform: Platform) -> None:
    """Four unauthenticated 16 MB bodies to /login at once: refused 413 as they arrive, never
    parsed (they used to be: 4.5 s of loop and 450 MB)."""
    platform = sqlite_platform
    body = json.dumps({"username": "x" * (16 * 1000 * 1000), "password": "y"}).encode()
    before = rss_mb(platform.coordinator.pid)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        answer = http("POST", f"{platform.url}/login", raw=body)
        answers.append((answer.status, answer.json["msg"]))

    started = time.monotonic()
    senders = [threading.Thread(target=post) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    took = time.monotonic() - started
    grown = rss_mb(platform.coordinator.pid) - before
    assert [status for status, _ in answers] == [413] * 4, answers
    assert all(f"the limit is {SMALL_JSON_BODY}" in msg for _, msg in answers)
    assert took < 10, f"four 16 MB bodies took {took:.1f} s"
    assert grown < 50, f"the coordinator grew by {grown:.0f} MB"
    # refused before authentication too: the token of an oversized body is never looked at
    junk = b"[" + b"0," * SMALL_JSON_BODY + b"0]"
    for path in ("/workers/heartbeat", "/tasks/query", "/auth"):
        answer = http("POST" if path != "/auth" else "GET", f"{platform.url}{path}", raw=junk, token="not-a-token")
        assert answer.status == 413, (path, answer.status, answer.body[:200])
    # nor does a body sent with the /events upgrade fill the coordinator's memory: it is cut at once
    upgrade = socket.create_connection(address(platform))
    upgrade.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n")
    with contextlib.suppress(OSError):
        upgrade.sendall(b"x" * MB)
    assert closed_within(upgrade, 10)
    upgrade.close()
    assert platform.api("GET", "/health").status == 200


# --- 4. batch size bound, the SDK splits, chunks interleave -----------------------------------


def test_batches_are_bounded_and_the_sdk_splits_larger_ones(platform: Platform, tmp_path: Path) -> None:
    answer = platform.api("POST", "/tasks/submit", trivial_batch(MAX_BATCH_TASKS + 1))
    assert answer.status == 400
    assert f"at most {MAX_BATCH_TASKS} tasks, not {MAX_BATCH_TASKS + 1}" in answer.json["msg"]

    async def scenario() -> list[Any]:
        client = AsyncClient(platform.url, platform.token(), ADMIN[0])
        try:
            requests = [SubmitTaskReq(task_spec=TaskSpec(args=["true"]), labels=[f"n{index}"]) for index in range(MAX_BATCH_TASKS + 50)]
            return (await client.submit_many(requests)).results
        finally:
            await client.aclose()

    results = asyncio.run(scenario())
    assert len(results) == MAX_BATCH_TASKS + 50 and all(item.Ok is not None for item in results)
    ids = [item.Ok.task_id for item in results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, across the split
    last = platform.api("GET", f"/tasks/{results[-1].Ok.uuid}").json["info"]
    assert last["labels"] == [f"n{MAX_BATCH_TASKS + 49}"]


def test_heartbeats_interleave_with_a_large_batch_on_sqlite(sqlite_platform: Platform) -> None:
    """SQLite has one writer: a 10,000-task batch in one transaction held it (and the loop) until
    it was done. Committed 1,000 at a time, a heartbeat waits for a chunk, not for the batch."""
    platform = sqlite_platform
    worker_token = platform.api("POST", "/workers", {"groups": []}).json["token"]
    batch = trivial_batch(MAX_BATCH_TASKS)
    assert platform.api("POST", "/tasks/submit", batch).status == 200  # warm up
    beats: list[tuple[float, float]] = []
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert http("POST", f"{platform.url}/workers/heartbeat", token=worker_token).status == 200
            beats.append((started, time.monotonic()))
            time.sleep(0.02)

    beater = threading.Thread(target=heartbeat)
    beater.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert platform.api("POST", "/tasks/submit", batch).status == 200
        ended = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        beater.join()
    during = [(sent, answered) for sent, answered in beats if sent >= started and answered <= ended]
    longest = max((answered - sent for sent, answered in beats if answered > started and sent < ended), default=0)
    took = ended - started
    assert len(during) >= 3, f"{len(during)} heartbeats were answered during a {took:.2f} s batch"
    assert longest < took * 0.6, f"a heartbeat waited {longest:.2f} s of a {took:.2f} s batch"


# --- 5. timeouts ------------------------------------------------------------------------------


def test_half_sent_requests_are_cut_within_the_timeouts(tmp_path: Path) -> None:
    platform = start_platform(tmp_path / "platform", env={"MITO_HTTP_IDLE_TIMEOUT": "2s", "MITO_HTTP_BODY_TIMEOUT": "2s"})
    try:
        half_header = socket.create_connection(address(platform))
        half_header.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        half_body = socket.create_connection(address(platform))
        half_body.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user")
        idle = socket.create_connection(address(platform))  # a whole request, then nothing: the keep-alive ends too
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        cut = [closed_within(connection, 15) for connection in (half_header, half_body, idle)]
        took = time.monotonic() - started
        for connection in (half_header, half_body, idle):
            connection.close()
        assert cut == [True, True, True], cut
        assert took < 12
    finally:
        platform.stop()


def test_long_polls_and_event_streams_outlive_the_timeouts_but_a_silent_peer_does_not(tmp_path: Path) -> None:
    """Idle and body timeouts of 1 s: a worker's 4 s long poll still answers, an event stream that
    answers pings stays open and live; a socket that never answers the pings is closed."""
    env = {"MITO_HTTP_IDLE_TIMEOUT": "1s", "MITO_HTTP_BODY_TIMEOUT": "1s", "MITO_EVENTS_PING_INTERVAL": "1s"}
    platform = start_platform(tmp_path / "platform", env=env)
    try:
        worker_token = platform.api("POST", "/workers", {"groups": []}).json["token"]
        status, _, silent = raw_event_socket(platform, platform.token())
        assert status == 101

        async def scenario() -> tuple[float, int, dict[str, Any] | None]:
            stream = await websocket_connect(events_url(platform, platform.token()))
            started = time.monotonic()
            poll = await asyncio.to_thread(http, "GET", f"{platform.url}/workers/tasks?wait=4", None, worker_token)
            waited = time.monotonic() - started
            task = await asyncio.to_thread(submit, platform, ADMIN[0])
            event = await next_message(stream, 10)
            await close_quietly(stream)
            return waited, poll.status, event if event and event.get("uuid") == task else None

        waited, status, event = asyncio.run(scenario())
        assert status == 200 and waited >= 3.5
        assert event is not None, "the event stream did not stay live past the idle timeout"
        assert closed_within(silent, 15), "a socket that never answers pings stays open"
        silent.close()
    finally:
        platform.stop()
