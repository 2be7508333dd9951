"""The coordinator: builds the services once, assembles the routes, serves until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import json
import logging
import os
import resource
import secrets
import signal
from collections.abc import Awaitable, Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from tornado.httpserver import HTTPServer
from tornado.web import Application

from mito_lab.config import CoordinatorConfig, parse_bind, without_password
from mito_lab.server import openapi
from mito_lab.server.db.engine import Database
from mito_lab.server.events import RedisEvents, make_events, remove_reference_acl_users
from mito_lab.server.handlers.base import MAX_DRAINED_BODY, SMALL_JSON_BODY, NotFoundHandler
from mito_lab.server.services import uploads
from mito_lab.server.services.activity import ACCESS, CANCEL, DATABASE_WATCH_SECONDS, EVENTS, TASKS_READY, watch_database
from mito_lab.server.services.alerts import AlertService
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

# Silent workers are looked for this often: a worker heartbeating every second is removed within a
# second of its allowance (``WorkerService._silent``); the look is one query, without a transaction.
REAP_SECONDS = 1.0

# Tornado tries the routes in order: the workers' protocol, the busiest, comes first.
HANDLER_MODULES = ("workers", "tasks", "blobs", "misc", "users", "admin", "groups", "attachments", "alerts", "events")


class StartupError(Exception):
    """The coordinator cannot start; the message says which service, where, and why, in one line."""


async def _using(service: str, where: str, step: Callable[[], Awaitable[Any]]) -> None:
    try:
        await step()
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise StartupError(f"cannot use {service} at {where}: {reason}") from exc


class DataDirInUse(StartupError):
    """Another coordinator holds the data dir; the message names it and its PID."""


def lock_data_dir(data_dir: Path) -> int:
    """Take the data dir for this process's life (an exclusive ``flock`` on ``coordinator.lock``,
    released when the descriptor closes, however the process ends): a second coordinator on the
    same SQLite file and local store would run tasks twice. Returns the descriptor to keep open."""
    path = data_dir / "coordinator.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise DataDirInUse(f"the data dir {data_dir} is in use by another coordinator (PID {holder})") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def make_store(config: CoordinatorConfig) -> ObjectStore:
    buckets = [config.artifacts_bucket, config.attachments_bucket]
    if config.s3_url:
        return S3Store(config.s3_url, config.s3_access_key, config.s3_secret_key, config.s3_region, buckets)
    return LocalStore(config.data_dir / "objects", buckets, config.public_url)


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # the embedded database or object store lives in the data dir: one coordinator at a time
        embedded = config.db_url is None or not config.s3_url
        self._data_dir_lock = lock_data_dir(config.data_dir) if embedded else None
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
        self.workers = WorkerService(self.context)
        self.users = UserService(self.context, retire_workers=self.workers.retire_workers_of)
        self.groups = GroupService(self.context, revoke_links=self.workers.revoke_links)
        self.attachments = AttachmentService(self.context)
        self.logs = LogService(self.context)
        self.tasks = TaskService(self.context, hand_over=self.workers.dispatch.hand_over)
        self.streams = EventStreamService(self.context, self.users, self.groups)
        self.alerts = AlertService(self.context)
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
        """Start, or raise ``StartupError`` saying which service failed (a database or object
        store that cannot be reached, a port in use)."""
        config = self.config
        if config.redis_url:
            await _using("Redis", without_password(config.redis_url), self._start_events)
        else:
            await self._start_events()
        store = "the S3 store" if config.s3_url else "the local object store"
        await _using(store, config.s3_url or str(config.data_dir / "objects"), self.context.store.start)
        database = self.context.db.engine.url.render_as_string(hide_password=True)
        await _using("the database", database, self.context.db.migrate)
        await self.users.ensure_admin()
        host, port = parse_bind(config.bind)
        # A connection has http_idle_timeout to send its request's headers (Tornado's one timeout for
        # a new request, on a new or a kept-alive connection) and http_body_timeout for a body; once a
        # request is read neither applies, so long polls wait as long as they asked.
        self._server = HTTPServer(
            self.make_app(), max_body_size=MAX_DRAINED_BODY,
            idle_connection_timeout=config.http_idle_timeout.total_seconds(),
            body_timeout=config.http_body_timeout.total_seconds(),
        )
        try:
            self._server.listen(port, host)
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.bind}: {exc.strerror or exc}") from exc
        self.workers.restore()  # from now on the workers can reach it
        self.streams.start()
        self.alerts.start()
        # What start-up built (modules, models, schemas: over 100,000 objects) lives as long as the
        # process: frozen out of the collector's sight, a full collection scans only what came since.
        # A 10,000-task batch triggers a few; over the start-up heap they took a third of its time.
        gc.freeze()
        # forgetting old live output and settling the uploads no one has read yet or whose URLs
        # expired: at the pace reaping had before workers said their heartbeat intervals
        housekeeping = max(1.0, min(self.config.heartbeat_timeout.total_seconds() / 4, 30.0))
        self._background.append(asyncio.create_task(self._every(REAP_SECONDS, (self.workers.reap,))))
        self._background.append(asyncio.create_task(self._every(housekeeping, (self.logs.prune, self._settle_uploads))))
        if not isinstance(self.context.events, RedisEvents):  # Redis already carries every coordinator's events
            self._background.append(asyncio.create_task(self._watch_database()))
        log.warning("Set random shutdown secret: %s", self.shutdown_secret)
        log.info("coordinator listening on http://%s:%d (database: %s)", host, port, database)

    @staticmethod
    async def _every(period: float, jobs: tuple[Callable[[], Awaitable[None]], ...]) -> None:
        """Run ``jobs`` every ``period`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(period)
            for job in jobs:
                try:
                    await job()
                except Exception as exc:  # a failed round is retried next period; it must not stop the loop
                    if isinstance(exc, DBAPIError) and exc.connection_invalidated:  # the pool is renewed already (handlers.base)
                        log.warning("housekeeping: %s: the database connection was lost (%s)", job.__qualname__, exc.orig)
                    else:
                        log.exception("housekeeping: %s failed", job.__qualname__)

    async def _settle_uploads(self) -> None:
        await uploads.sweep(self.context)

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
        if not isinstance(events, RedisEvents):
            return
        if config.redis_worker_password or config.redis_client_password:
            log.warning("redis: the worker and client passwords are ignored: no Redis URL is handed out "
                        "(users follow task states through /events, workers report them to the coordinator)")
        if not config.redis_skip_acl_rules:
            await remove_reference_acl_users(events)

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
        await self.alerts.close()
        await self.context.events.close()
        await self.context.db.close()
        if self._data_dir_lock is not None:
            os.close(self._data_dir_lock)
            self._data_dir_lock = None


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
