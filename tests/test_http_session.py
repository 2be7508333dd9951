"""The HTTP session of the SDK and the worker (``mito_lab.client.http``): one kept-alive connection
for many calls, long polls beside other calls, errors mapped as they always were, transfers streamed
in pieces; and a stopping coordinator answering 503, never 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from conftest import ADMIN, Platform, backend_args, start_platform
from mito_lab.client.api import AsyncClient
from mito_lab.client.http import HttpSession, MitoConnectionError, MitoError
from mito_lab.config import CoordinatorConfig
from mito_lab.server.app import Coordinator
from mito_lab.testing import free_port
from mito_lab.wire import HealthResp, RegisterWorkerReq, RegisterWorkerResp, TaskQueryResp, WorkerTaskResp

MiB = 1 << 20


# --- a small server that counts the connections it accepts -----------------------------------------


class CountingServer(HTTPServer):
    """``GET /hello`` answers at once; ``GET /hold`` only once ``release`` is set (a long poll)."""

    url = ""
    accepted = 0

    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        self.accepted += 1
        super().handle_stream(stream, address)


class Hello(RequestHandler):
    def get(self) -> None:
        self.write({"msg": "hello"})


class Hold(RequestHandler):
    async def get(self) -> None:
        await self.settings["release"].wait()
        self.write({"msg": "released"})


@contextlib.asynccontextmanager
async def counting_server() -> AsyncIterator[tuple[CountingServer, asyncio.Event]]:
    release = asyncio.Event()
    server = CountingServer(Application([(r"/hello", Hello), (r"/hold", Hold)], release=release))
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    server.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        yield server, release
    finally:
        release.set()
        server.stop()
        await server.close_all_connections()


def test_calls_reuse_one_kept_alive_connection() -> None:
    async def scenario() -> int:
        async with counting_server() as (server, _):
            session = HttpSession(server.url)
            try:
                for _ in range(50):
                    assert json.loads(await session.call("GET", "hello")) == {"msg": "hello"}
            finally:
                session.close()
            return server.accepted

    assert asyncio.run(scenario()) == 1


def test_a_long_poll_under_way_does_not_hold_back_other_calls() -> None:
    async def scenario() -> int:
        async with counting_server() as (server, release):
            session = HttpSession(server.url, parallel=2)
            try:
                poll = asyncio.create_task(session.call("GET", "hold", wait=60))
                for _ in range(20):
                    assert json.loads(await asyncio.wait_for(session.call("GET", "hello"), 10)) == {"msg": "hello"}
                assert not poll.done()
                release.set()
                assert json.loads(await poll) == {"msg": "released"}
            finally:
                session.close()
            return server.accepted

    assert asyncio.run(scenario()) == 2  # the long poll's connection, and the one every call took


def test_a_call_that_outlasts_its_timeout_is_a_connection_error() -> None:
    async def scenario() -> MitoError:
        async with counting_server() as (server, _):
            session = HttpSession(server.url)
            try:
                with pytest.raises(MitoConnectionError) as late:
                    await session.call("GET", "hold", timeout=0.2)
            finally:
                session.close()
            return late.value

    late = asyncio.run(scenario())
    assert late.status == 0 and str(late).startswith("cannot reach http://127.0.0.1:") and "timed out" in str(late)


# --- against a coordinator --------------------------------------------------------------------------


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_errors_map_as_before(sqlite_platform: Platform) -> None:
    missing_task = uuid.uuid4()

    async def scenario() -> None:
        session = HttpSession(sqlite_platform.url, sqlite_platform.token())
        forged = HttpSession(sqlite_platform.url, "not-a-token")
        nobody = HttpSession(f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(MitoError) as missing:
                await session.call("GET", f"tasks/{missing_task}", None, TaskQueryResp)
            assert (missing.value.status, missing.value.msg) == (404, f"Task {missing_task} not found")
            with pytest.raises(MitoError) as refused:
                await forged.call("GET", "auth")
            assert (refused.value.status, refused.value.msg) == (401, "Authentication error: Invalid token")
            with pytest.raises(MitoConnectionError) as unreachable:
                await nobody.call("GET", "health", None, HealthResp)
            assert unreachable.value.status == 0 and str(unreachable.value).startswith(f"cannot reach {nobody.base_url}health: ")
            assert await session.call("GET", "auth") == ADMIN[0]  # an error leaves the session usable
        finally:
            for each in (session, forged, nobody):
                each.close()

    asyncio.run(scenario())


def test_a_session_follows_its_event_loop_and_leaves_nothing_open(sqlite_platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    """One session used by two ``asyncio.run`` (as a script may), then closed while a long poll is
    still under way: no descriptor stays open, no error is logged afterwards."""
    token = sqlite_platform.token()
    before = open_descriptors()
    session = HttpSession(sqlite_platform.url, token)
    for _ in range(2):
        assert asyncio.run(session.call("GET", "auth")) == ADMIN[0]

    async def abandon_a_long_poll() -> None:
        worker = await session.call("POST", "workers", RegisterWorkerReq(), RegisterWorkerResp)
        session.token = worker.token
        poll = asyncio.create_task(session.call("GET", "workers/tasks", None, WorkerTaskResp, wait=30))
        await asyncio.sleep(0.5)
        poll.cancel()
        session.close()
        await asyncio.sleep(0.5)  # where a timer left behind by the close would fire

    with caplog.at_level(logging.ERROR):
        asyncio.run(abandon_a_long_poll())
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert open_descriptors() == before


@pytest.fixture(params=["sqlite-local", "sqlite-s3"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A coordinator with each object store: its own signed URLs, or SeaweedFS's."""
    running = start_platform(tmp_path / "platform", *backend_args(request.param, request))
    yield running
    running.stop()


def test_a_large_file_goes_up_and_down_in_pieces(stored: Platform, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(24 * MiB))

    async def scenario() -> tuple[list[int], list[int], MitoError]:
        up: list[int] = []
        down: list[int] = []
        async with await AsyncClient.connect(stored.url, *ADMIN, credential_path=tmp_path / "credentials") as client:
            await client.upload_attachment(ADMIN[0], payload, "big.bin", progress=up.append)
            await client.download_attachment(ADMIN[0], "big.bin", tmp_path / "back.bin", progress=down.append)
            link = await client.attachment_url(ADMIN[0], "big.bin")
            with pytest.raises(MitoError) as forged:  # the store's own refusal, with its message
                await client.session.download_file(link.url + "0", tmp_path / "forged.bin")
        return up, down, forged.value

    up, down, forged = asyncio.run(scenario())
    assert (tmp_path / "back.bin").read_bytes() == payload.read_bytes()
    for pieces in (up, down):
        assert sum(pieces) == 24 * MiB and len(pieces) > 24 and max(pieces) <= MiB
    assert forged.status == 403 and forged.msg and not forged.msg.startswith(("<", "{"))
    assert not (tmp_path / "forged.bin").exists() and not (tmp_path / ".forged.bin.part").exists()


# --- a coordinator stopping --------------------------------------------------------------------------


def test_a_stopping_coordinator_answers_503_then_closes_its_connections(tmp_path: Path) -> None:
    """The coordinator runs in this process, so the request is sent just as ``stop()`` begins: on
    the connection kept alive from the call before, which stays open 0.1 s more (the long polls'
    answers flush meanwhile)."""

    async def scenario() -> tuple[Any, float]:
        port = free_port()
        coordinator = Coordinator(CoordinatorConfig(bind=f"127.0.0.1:{port}", data_dir=tmp_path / "data"))
        await coordinator.start()
        session = HttpSession(f"http://127.0.0.1:{port}")
        try:
            assert await session.call("GET", "health", None, HealthResp) is not None
            stopping = asyncio.create_task(coordinator.stop())
            await asyncio.sleep(0)  # stop() has begun
            started = time.monotonic()
            try:
                outcome: Any = await session.call("GET", "health", None, HealthResp)
            except MitoError as exc:
                outcome = exc
            elapsed = time.monotonic() - started
            await stopping
            with pytest.raises(MitoConnectionError):  # refused: nothing listens any more
                await session.call("GET", "health", None, HealthResp)
        finally:
            session.close()
        return outcome, elapsed

    outcome, elapsed = asyncio.run(scenario())
    assert isinstance(outcome, MitoError)
    # a machine stalled past the 0.1 s finds the connection closed, a connection error; never a 500
    assert (outcome.status, outcome.msg) == (503, "coordinator is shutting down") or (elapsed >= 0.1 and outcome.status == 0)


def test_the_coordinator_takes_the_hard_limit_of_open_files(tmp_path: Path) -> None:
    """Kept-alive connections hold a descriptor each: a coordinator started under a low soft
    limit raises it to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard limit of open files is only {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        platform = start_platform(tmp_path / "platform")  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{platform.coordinator.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3] == ("65536" if hard == resource.RLIM_INFINITY else str(hard)), line
    finally:
        platform.stop()
