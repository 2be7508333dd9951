"""What the coordinator tells the world as things happen: task and worker events on the event
stream (read by the WebSocket endpoint, dashboards and watchers), cancellation signals for
workers, and -- when Redis is configured -- the reference's ``task:<uuid>`` key and channel with
the integer exec state, so Redis-based watchers of the reference keep working."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import Statements, after_commit
from mito_lab.server.db.models import Task
from mito_lab.server.events import RECHECK, RedisEvents
from mito_lab.server.services.context import Context
from mito_lab.wire import TaskState, cpu_efficiency

if TYPE_CHECKING:  # tasks.py imports this module
    from mito_lab.server.services.tasks import NewTask

EVENTS = "mito:events"  # {"kind": "task" | "worker" | "log", ...}
TASKS_READY = "mito:tasks-ready"  # wakes the waiting fetches of every coordinator
OFFERED_TASKS = 64  # the most new tasks an announcement offers by id (``announce_ready``)
CANCEL = "mito:cancel"  # {"worker": <worker uuid>, "task": <task uuid>}
ACCESS = "mito:access"  # {"user": <username>}: the user's tokens, state or memberships changed
EXEC_STATE_TTL_SECONDS = 3600
_READY_ANNOUNCED = "mito_ready_announced"
# How often a long poll re-checks the database even without an event: a safety net only. Changes
# made through other coordinators arrive by Redis, or else by ``watch_database`` (one query every
# DATABASE_WATCH_SECONDS for the whole coordinator, however many polls wait).
RECHECK_SECONDS = 30.0
DATABASE_WATCH_SECONDS = 2.0
T = TypeVar("T")


async def long_poll(
    context: Context,
    check: Callable[[], Awaitable[T | None]],
    channel: str,
    relevant: Callable[[dict[str, Any]], bool],
    wait: float,
) -> T | None:
    """Run ``check`` until it returns something, re-running it when a relevant event arrives on
    ``channel`` (or every few seconds); ``None`` when ``wait`` seconds pass or the coordinator stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with context.events.subscribe(channel) as events:  # before the check: nothing is missed
        while not context.closing:
            found = await check()
            remaining = deadline - loop.time()
            if found is not None or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                while True:
                    event = await asyncio.wait_for(events.get(), min(remaining, RECHECK_SECONDS))
                    if context.closing or event == RECHECK or relevant(event):
                        break
    return None


async def watch_database(context: Context) -> None:
    """For coordinators sharing a database without Redis: when the tasks changed (through any
    coordinator), wake the waiting long polls so that they look again."""
    last: tuple[Any, ...] | None = None
    while not context.closing:
        await asyncio.sleep(DATABASE_WATCH_SECONDS)
        async with context.db.read() as session:
            mark = tuple((await session.execute(sa.select(sa.func.max(Task.updated_at), sa.func.max(Task.id)))).one())
        if last is not None and mark != last:
            for channel in (TASKS_READY, CANCEL, EVENTS):
                context.events.publish(channel, RECHECK)
        last = mark


def task_payload(task: Task | NewTask, group: str) -> dict[str, Any]:
    return {
        "kind": "task",
        "uuid": _text(task.uuid),
        "group": group,
        "state": task.state.value,
        "exec_state": task.exec_state.value if task.exec_state else None,
        "archived": task.archived_at is not None,
        "exit_status": task.exit_status,
        "msg": task.result_msg.value if task.result_msg else None,
        "attempts": task.attempts,
        "cancel_requested": task.cancel_requested,
        "started_at": _text(task.started_at) if task.started_at else None,
        "ended_at": _text(task.ended_at) if task.ended_at else None,
        **usage_fields(task),
    }


@functools.lru_cache(maxsize=4096)
def _text(value: uuid_module.UUID | datetime) -> str:
    """A task's uuid or moment as its events show it: formatted once for the several events a
    task's run makes in a row (one per exec state). Moments here are all UTC, so equal moments
    (the cache's keys) format alike."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def usage_fields(task: Task | NewTask) -> dict[str, Any]:
    """The run's cost, on the event of the commit that reported it."""
    if task.archived_at is None or task.cpu_seconds is None or task.wall_seconds is None or task.cores is None:
        return {}
    return {"cpu_s": task.cpu_seconds, "max_rss": task.max_rss, "cpu_efficiency": cpu_efficiency(task.cpu_seconds, task.wall_seconds, task.cores)}


def announce_ready(context: Context, session: AsyncSession | Statements, new: Sequence[NewTask] = ()) -> None:
    """Once the transaction commits, wake waiting fetches: a task may now match some worker.
    Announced once per transaction, however many tasks it made runnable. ``new``: tasks it
    created Ready; if they are all it made runnable, and no more than ``OFFERED_TASKS``, the
    announcement offers them (id, group, tags), and each coordinator hands each to one waiting
    worker that can run it (``Dispatcher``), instead of waking them all to look."""
    announced = session.info.get(_READY_ANNOUNCED)
    if announced is None:
        announced = session.info[_READY_ANNOUNCED] = {"offer": []}
        after_commit(session, lambda: context.events.publish(TASKS_READY, announced if announced.get("offer") else {}))
    offer = announced.get("offer")
    if offer is not None and new and len(offer) + len(new) <= OFFERED_TASKS:
        offer += [[task.id, task.group_id, list(task.tags)] for task in new]
    else:  # a task became runnable some other way, or too many: every waiting worker looks
        announced.pop("offer", None)


async def task_changed(context: Context, session: AsyncSession, task: Task, **details: Any) -> None:
    """Publish the task's new state once the transaction commits (and wake fetches if it is Ready);
    ``details`` add to the event (e.g. the worker that took it)."""
    payload = {**task_payload(task, await context.group_name(session, task.group_id)), **details}
    after_commit(session, lambda: context.events.publish(EVENTS, payload))
    if task.state == TaskState.Ready and task.archived_at is None:
        announce_ready(context, session)
    if task.exec_state is not None and isinstance(context.events, RedisEvents):
        key, code = f"task:{task.uuid}", task.exec_state.code
        after_commit(session, lambda: context.events.publish_raw(key, code, ttl=EXEC_STATE_TTL_SECONDS))


async def tasks_created(context: Context, session: AsyncSession | Statements, tasks: Sequence[NewTask]) -> None:
    """Publish the events of new tasks in one batch once the transaction commits (one Redis
    pipeline for a batch of any size), and wake fetches if any is Ready (offering them:
    ``announce_ready``)."""
    groups = {group_id: await context.group_name(session, group_id) for group_id in {task.group_id for task in tasks}}
    messages = [(EVENTS, task_payload(task, groups[task.group_id])) for task in tasks]
    after_commit(session, lambda: context.events.publish_many(messages))
    ready = [task for task in tasks if task.state == TaskState.Ready]
    if ready:
        announce_ready(context, session, ready)


def worker_changed(context: Context, session: AsyncSession, worker_id: uuid_module.UUID, groups: list[str], event: str, **details: Any) -> None:
    payload = {"kind": "worker", "worker_id": str(worker_id), "groups": groups, "event": event, **details}
    after_commit(session, lambda: context.events.publish(EVENTS, payload))


def access_changed(context: Context, session: AsyncSession, username: str, joined: str | None = None) -> None:
    """Once the transaction commits, tell every coordinator that what ``username`` may see or do
    changed (a membership, the user's state, a password or sign-in that ends their other tokens):
    their open event streams look again (``EventStreamService``); the group they ``joined``, if
    that is the change, streams at once."""
    payload = {"user": username, "joined": joined}
    after_commit(session, lambda: context.events.publish(ACCESS, payload))


def cancel_requested(context: Context, session: AsyncSession, worker_id: uuid_module.UUID, task_uuid: uuid_module.UUID, taken: bool = False) -> None:
    """Tell the worker to stop a task once the transaction commits. ``taken``: the task is no
    longer the worker's (its grant was revoked), so the worker's heartbeat cannot find it in the
    database: the event itself carries it."""
    payload = {"worker": str(worker_id), "task": str(task_uuid), **({"taken": True} if taken else {})}
    after_commit(session, lambda: context.events.publish(CANCEL, payload))
