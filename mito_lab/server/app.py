"""The coordinator: builds the services once, assembles the routes, serves until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import resource
import secrets
import signal
from importlib import import_module

from tornado.httpserver import HTTPServer
from tornado.web import Application

from mito_lab.config import CoordinatorConfig
from mito_lab.server import openapi
from mito_lab.server.db.engine import Database
from mito_lab.server.events import (
    RedisEvents,
    access_url,
    create_acl_users,
    make_events,
)
from mito_lab.server.handlers.base import MAX_DRAINED_BODY, SMALL_JSON_BODY, NotFoundHandler
from mito_lab.server.services.activity import ACCESS, CANCEL, DATABASE_WATCH_SECONDS, EVENTS, TASKS_READY, watch_database
from mito_lab.server.services.attachments import AttachmentService
from mito_lab.server.services.auth import Tokens, load_or_create_keys
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import GroupService
from mito_lab.server.services.logs import LogService
from mito_lab.server.services.streams import EventStreamService
from mito_lab.server.services.tasks import TaskService
from mito_lab.server.services.users import UserService
from mito_lab.server.services.workers import WorkerService
from mito_lab.server.storage import LocalStore, ObjectStore, S3Store

log = logging.getLogger(__name__)

# Tornado tries the routes in order: the workers' protocol, the busiest, comes first.
HANDLER_MODULES = ("workers", "tasks", "blobs", "misc", "users", "admin", "groups", "attachments", "events")


def parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        raise ValueError(f"invalid bind address {bind!r}: use HOST:PORT, e.g. 127.0.0.1:5000") from None


def make_store(config: CoordinatorConfig) -> ObjectStore:
    buckets = [config.artifacts_bucket, config.attachments_bucket]
    if config.s3_url:
        return S3Store(config.s3_url, config.s3_access_key, config.s3_secret_key, config.s3_region, buckets)
    return LocalStore(config.data_dir / "objects", buckets)


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        db_url = config.db_url or f"sqlite:///{config.data_dir / 'mitosis.db'}"
        private_key, public_key = load_or_create_keys(
            config.data_dir, config.access_token_private_path, config.access_token_public_path
        )
        self.context = Context(
            config=config,
            db=Database(db_url),
            store=make_store(config),
            tokens=Tokens(private_key, public_key),
            events=make_events(config.redis_url, (EVENTS, TASKS_READY, CANCEL, ACCESS)),
        )
        self.users = UserService(self.context)
        self.groups = GroupService(self.context)
        self.attachments = AttachmentService(self.context)
        self.logs = LogService(self.context)
        self.workers = WorkerService(self.context)
        self.tasks = TaskService(self.context)
        self.streams = EventStreamService(self.context, self.users, self.groups)
        self._server: HTTPServer | None = None
        self._background: list[asyncio.Task[None]] = []
        # POST /admin/shutdown must present this; it is only ever written to the log (reference 1.3)
        self.shutdown_secret = secrets.token_urlsafe(24)
        self.stopping = asyncio.Event()

    @staticmethod
    def routes() -> list[tuple[str, type]]:
        handlers = []
        for name in HANDLER_MODULES:
            handlers.extend(import_module(f"mito_lab.server.handlers.{name}").default_handlers)
        return handlers

    @functools.cache  # noqa: B019 - one coordinator per process; the document never changes
    def openapi(self) -> bytes:
        return json.dumps(openapi.build(self.routes())).encode()

    def make_app(self) -> Application:
        ping = self.config.events_ping_interval.total_seconds()
        return Application(
            self.routes(), default_handler_class=NotFoundHandler, mito=self, compress_response=False,
            # an event stream is long-lived: a peer that stops answering pings is closed, whatever the idle timeout
            websocket_ping_interval=ping, websocket_ping_timeout=ping,
            websocket_max_message_size=SMALL_JSON_BODY,  # clients have nothing to say on it
        )

    async def start(self) -> None:
        await self._start_events()
        await self.context.store.start()
        await self.context.db.migrate()
        await self.users.ensure_admin()
        await self.workers.restore()
        host, port = parse_bind(self.config.bind)
        # A connection has http_idle_timeout to send its request's headers (Tornado's one timeout for
        # a new request, on a new or a kept-alive connection) and http_body_timeout for a body; once a
        # request is read neither applies, so long polls wait as long as they asked.
        self._server = HTTPServer(
            self.make_app(), max_body_size=MAX_DRAINED_BODY,
            idle_connection_timeout=self.config.http_idle_timeout.total_seconds(),
            body_timeout=self.config.http_body_timeout.total_seconds(),
        )
        self._server.listen(port, host)
        self.streams.start()
        # What start-up built (modules, models, schemas: over 100,000 objects) lives as long as the
        # process: frozen out of the collector's sight, a full collection scans only what came since.
        # A 10,000-task batch triggers a few; over the start-up heap they took a third of its time.
        gc.freeze()
        self._background.append(asyncio.create_task(self._housekeeping()))
        if not isinstance(self.context.events, RedisEvents):  # Redis already carries every coordinator's events
            self._background.append(asyncio.create_task(self._watch_database()))
        log.warning("Set random shutdown secret: %s", self.shutdown_secret)
        log.info("coordinator listening on http://%s:%d (database: %s)", host, port, self.context.db.engine.url.render_as_string(hide_password=True))

    async def _housekeeping(self) -> None:
        """Remove workers that stopped heartbeating; forget old live output."""
        period = max(1.0, min(self.config.heartbeat_timeout.total_seconds() / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            for job in (self.workers.reap, self.logs.prune):
                try:
                    await job()
                except Exception:  # a failed round is retried next period; it must not stop the loop
                    log.exception("housekeeping: %s failed", job.__qualname__)

    async def _watch_database(self) -> None:
        while True:
            try:
                await watch_database(self.context)
                return
            except Exception:  # e.g. the database restarting: try again, the polls' own rechecks cover the gap
                log.exception("watching the database failed")
                await asyncio.sleep(DATABASE_WATCH_SECONDS)

    async def _start_events(self) -> None:
        events, config = self.context.events, self.config
        await events.start()
        if not isinstance(events, RedisEvents) or config.redis_url is None:
            return
        if config.redis_skip_acl_rules:
            worker_password, client_password = config.redis_worker_password, config.redis_client_password
        else:
            worker_password, client_password = await create_acl_users(
                events, config.redis_worker_password, config.redis_client_password
            )
        if worker_password:
            self.context.redis_worker_url = access_url(config.redis_url, "mitosis_worker", worker_password)
        if client_password:
            self.context.redis_client_url = access_url(config.redis_url, "mitosis_client", client_password)

    async def stop(self) -> None:
        """Refuse new requests (503) and connections, answer the long polls, close every connection
        (the idle kept-alive ones too), then the services."""
        self.context.closing = True
        if self._server is not None:
            self._server.stop()
            self.workers.close()
            self.streams.close()  # event sockets are no longer the server's connections: closed here
            await asyncio.sleep(0.1)  # let the answered long-polls flush
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.close_all_connections(), 5)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.context.events.close()
        await self.context.db.close()


def raise_open_files_limit() -> None:
    """Every worker keeps a connection or two open (kept alive, plus its long poll), so the
    common soft limit of 1,024 descriptors would cap a fleet at a few hundred workers: take the
    hard limit, as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))


async def serve(config: CoordinatorConfig) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    raise_open_files_limit()
    coordinator = Coordinator(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, coordinator.stopping.set)
    await coordinator.start()
    try:
        await coordinator.stopping.wait()
    finally:
        log.info("coordinator shutting down")
        await coordinator.stop()
