"""Campaign alerts (issue 22): the runs of a group that carry a label notify a webhook when they
have all ended (``done``), or when their failures reach a threshold (``failures``).

Evaluated off the request path. The bus listener only notes which tasks ended; at most every
``EVALUATE_SECONDS`` one statement finds the alerts whose labels those tasks carry, and one
aggregate per (group, label) counts the label's runs by outcome (``ix_task_labels_label``, then
the tasks by primary key; a run replaced by a rerun is not counted, its rerun is). An event fires
once for the runs there are: its mark (the label's newest task id when it fired) is raised by a
conditional UPDATE, so when several coordinators hear the same end (Redis) one of them sends it,
and it fires again only once newer tasks carry the label (a rerun, an extended grid) and the
condition holds again. An alert fires only while its creator is Active and holds Write in the
group: revoking that access ends the alert's effect at once.

Webhook POSTs are JSON (``wire.AlertPayload``) signed with the alert's secret
(``wire.alert_signature``); they go through a bounded queue to background senders, each POST with
``alert_timeout`` to be answered, retried up to ``alert_attempts`` times with waits doubling from
``alert_backoff`` on a connection error, a timeout, a 5xx, 408 or 429 (another answer is the
receiver's refusal). Nothing of it runs in a request. What each delivery came to is kept on the
alert (``delivery``) and logged; deliveries still waiting when the coordinator stops are lost,
and logged as such."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuid_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from mito_lab import __version__
from mito_lab.server.db.engine import after_commit
from mito_lab.server.db.models import Alert, Group, Task, TaskLabel, User, UserGroup, uuid_text
from mito_lab.server.errors import InvalidRequest, NotFound
from mito_lab.server.services.activity import EVENTS
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import group_with_role, require_role
from mito_lab.text import counted
from mito_lab.wire import (
    ALERT_SIGNATURE_HEADER,
    ALERT_TIMESTAMP_HEADER,
    RERUN_PREFIX,
    AlertCounts,
    AlertEvent,
    AlertInfo,
    AlertPayload,
    AlertsResp,
    CreateAlertReq,
    Role,
    TaskState,
    UserState,
    alert_signature,
)

log = logging.getLogger(__name__)

EVALUATE_SECONDS = 0.5  # the ends of a burst of tasks are evaluated together, this long after the first
RETRY_EVALUATION_SECONDS = 2.0  # after a failed evaluation (the database away), its ends are looked at again
ENDED_PER_STATEMENT = 500  # task uuids per statement that finds the alerts they concern
# A label is counted again at the earliest this many times as long after its last count took: a
# campaign of 100,000 runs whose count takes 0.2 s is counted every 4 s at most (5% of the time).
LABEL_COUNT_DUTY = 20
QUEUED_DELIVERIES = 1000  # webhook POSTs waiting to be sent; past it a delivery is dropped (and recorded)
DELIVERIES_AT_ONCE = 32  # under way, waits between attempts included
MAX_ANSWER_BYTES = 1024 * 1024  # a receiver's answer is read and dropped, up to this size
RETRIED_STATUSES = frozenset({408, 429})  # besides connection errors, timeouts and 5xx
SECRET_HINT_CHARS = 4


@dataclass(frozen=True)
class Delivery:
    alert_id: int
    url: str
    secret: str
    event: AlertEvent
    body: bytes
    delivery_id: str


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def _runs_statement() -> sa.Select:
    """The runs of one label in one group by outcome, and the label's newest task id: tasks
    labelled ``:label`` in ``:group_id`` that no rerun in the group replaces. Served by
    ``ix_task_labels_label`` (the label's tasks, then each one's row by key; the rerun check is
    one more lookup of that index per task)."""
    rerun_label, rerun = aliased(TaskLabel), aliased(Task)
    replaced = sa.exists().where(
        rerun_label.label == sa.literal(RERUN_PREFIX) + uuid_text(Task.uuid), rerun.id == rerun_label.task_id, rerun.group_id == Task.group_id,
    )
    ended = Task.archived_at.is_not(None)
    held = sa.and_(~ended, Task.state.not_in([TaskState.Ready, TaskState.Pending]))
    return (
        sa.select(
            sa.func.count(), _count(ended), _count(sa.and_(ended, sa.or_(Task.state == TaskState.Cancelled, Task.exit_status != 0))),
            _count(held), sa.func.max(Task.id),
        )
        .select_from(Task).join(TaskLabel, TaskLabel.task_id == Task.id)
        .where(TaskLabel.label == sa.bindparam("label"), Task.group_id == sa.bindparam("group_id"), ~replaced)
    )


_RUNS = _runs_statement()
# the (group, label) pairs of alerts that some of the ended tasks carry: each task's row by its
# uuid, its labels by key, then the alerts by ``ix_alerts_group_label``
_CONCERNED = (
    sa.select(Alert.group_id, Alert.label).distinct()
    .join(TaskLabel, TaskLabel.label == Alert.label)
    .join(Task, sa.and_(Task.id == TaskLabel.task_id, Task.group_id == Alert.group_id))
    .where(Task.uuid.in_(sa.bindparam("uuids", expanding=True)))
)
# the alert's creator may still use it: Active, and Write or Admin in its group
_CREATOR_MAY = sa.and_(
    User.state == UserState.Active,
    sa.exists().where(UserGroup.user_id == Alert.creator_id, UserGroup.group_id == Alert.group_id, UserGroup.role.in_(Role.Write.and_above())),
)


def _origin(url: str) -> str:
    """What others see of a webhook URL (a chat's webhook URL is its own secret): scheme, host, port."""
    parsed = urlsplit(url)
    return f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}/…"


def _summary(event: AlertEvent, label: str, group: str, counts: AlertCounts, threshold: str) -> str:
    what = "all runs have ended" if event == AlertEvent.done else f"failures reached {threshold}"
    return (f"{label} in group {group}: {what} ({counted(counts.runs, 'run')}: {counts.succeeded} succeeded, {counts.failed} failed, "
            f"{counts.running} running, {counts.waiting} waiting)")


class AlertService:
    def __init__(self, context: Context) -> None:
        self.context = context
        self._ended: set[str] = set()  # uuids of tasks that ended since the last evaluation
        self._labels: set[tuple[int, str]] = set()  # (group id, label) to evaluate whatever ended: new alerts'
        self._next_count: dict[tuple[int, str], float] = {}  # (group id, label) -> loop time it may be counted again
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(QUEUED_DELIVERIES)
        self._slots = asyncio.Semaphore(DELIVERIES_AT_ONCE)
        self._sending: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stop_listening: Callable[[], None] | None = None
        self._http: SimpleAsyncHTTPClient | None = None

    # --- the rules, through the API -------------------------------------------------------------

    def _host_refused(self, url: str) -> str | None:
        allowed = self.context.config.alert_hosts
        host = urlsplit(url).hostname or ""
        if allowed and host.lower() not in {name.lower() for name in allowed}:
            return f"webhooks may only name the hosts {', '.join(allowed)} (alert_hosts), not {host}"
        return None

    async def create(self, user: User, request: CreateAlertReq) -> AlertInfo:
        """A new alert on the group's runs labelled ``request.label`` (Write in the group). Runs
        that have all ended already fire ``done`` at once."""
        refused = self._host_refused(request.url)
        if refused:
            raise InvalidRequest(refused)
        async with self.context.db.write() as session:
            group = await group_with_role(session, user, request.group_name, Role.Write)
            alert = Alert(
                group_id=group.id, creator_id=user.id, label=request.label, events=[event.value for event in request.on],
                failures=request.failures, failure_share=request.failure_share, url=request.url, secret=request.secret,
            )
            session.add(alert)
            await session.flush()
            key = (group.id, request.label)
            after_commit(session, lambda: self._look_at(labels=[key]))
            return self._info(alert, user, user.username, group.group_name, active=True)

    async def listing(self, user: User, group_name: str | None) -> AlertsResp:
        """The alerts of a group (default: the caller's own), oldest first (Read in the group)."""
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, group_name, Role.Read)
            rows = (await session.execute(
                sa.select(Alert, User.username, _CREATOR_MAY).join(User, User.id == Alert.creator_id)
                .where(Alert.group_id == group.id).order_by(Alert.id)
            )).all()
            alerts = [self._info(alert, user, creator, group.group_name, bool(active)) for alert, creator, active in rows]
            return AlertsResp(group_name=group.group_name, alerts=alerts)

    async def remove(self, user: User, alert_id: int) -> None:
        """Delete an alert (Write in its group); a delivery already under way still goes."""
        async with self.context.db.write() as session:
            alert = await session.get(Alert, alert_id)
            if alert is None:
                raise NotFound(f"Alert {alert_id}")
            await require_role(session, user, await session.get_one(Group, alert.group_id), Role.Write)
            await session.delete(alert)

    @staticmethod
    def _info(alert: Alert, viewer: User, creator: str, group: str, active: bool) -> AlertInfo:
        return AlertInfo(
            id=alert.id, group_name=group, label=alert.label, on=[AlertEvent(event) for event in alert.events],
            failures=alert.failures, failure_share=alert.failure_share,
            url=alert.url if alert.creator_id == viewer.id else _origin(alert.url),
            secret_hint="…" + alert.secret[-SECRET_HINT_CHARS:], creator_username=creator, created_at=alert.created_at,
            active=active, fired_at=alert.fired_at, last_event=alert.last_event, delivery=alert.delivery,
        )

    # --- running: hearing ends, evaluating, sending ---------------------------------------------

    def start(self) -> None:
        self._http = SimpleAsyncHTTPClient(force_instance=True, max_clients=DELIVERIES_AT_ONCE, max_body_size=MAX_ANSWER_BYTES)
        self._stop_listening = self.context.events.listen(EVENTS, self._heard)
        self._background = [asyncio.create_task(self._evaluate_forever()), asyncio.create_task(self._send_forever())]

    async def close(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
        lost = self._queue.qsize() + len(self._sending)
        for task in [*self._background, *self._sending]:
            task.cancel()
        await asyncio.gather(*self._background, *self._sending, return_exceptions=True)
        if lost:
            log.warning("alerts: %d webhook deliveries were still under way or waiting at shutdown: they are lost", lost)
        if self._http is not None:
            self._http.close()

    def _heard(self, event: Any) -> None:
        """On the bus, for every event: only note the tasks that ended (their outcome committed)."""
        if isinstance(event, dict) and event.get("kind") == "task" and event.get("archived"):
            self._look_at(ended=[event["uuid"]])

    def _look_at(self, ended: Iterable[str] = (), labels: Iterable[tuple[int, str]] = ()) -> None:
        self._ended.update(ended)
        self._labels.update(labels)
        self._wake.set()

    async def _evaluate_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(EVALUATE_SECONDS)
            self._wake.clear()
            ended, labels = self._ended, self._labels
            self._ended, self._labels = set(), set()
            try:
                await self._evaluate(ended, labels)
            except Exception:  # e.g. the database restarting: those ends are looked at again
                log.exception("alerts: evaluating %d task ends failed; trying again", len(ended))
                self._look_at(ended, labels)
                await asyncio.sleep(RETRY_EVALUATION_SECONDS)

    async def _evaluate(self, ended: set[str], labels: set[tuple[int, str]]) -> None:
        pending = list(ended)
        async with self.context.db.read() as session:
            for start in range(0, len(pending), ENDED_PER_STATEMENT):
                uuids = [uuid_module.UUID(value) for value in pending[start : start + ENDED_PER_STATEMENT]]
                labels.update((group_id, label) for group_id, label in (await session.execute(_CONCERNED, {"uuids": uuids})).all())
        loop = asyncio.get_running_loop()
        self._next_count = {key: moment for key, moment in self._next_count.items() if moment > loop.time()}
        later = {key for key in labels if key in self._next_count}
        for key in sorted(labels - later):
            began = loop.time()
            await self._evaluate_label(*key)
            self._next_count[key] = loop.time() + (loop.time() - began) * LABEL_COUNT_DUTY
        if later:
            self._look_at(labels=later)

    async def _evaluate_label(self, group_id: int, label: str) -> None:
        """Fire the due events of the alerts on ``label`` in the group. Read first, outside the
        writers' lock (on SQLite the writers run on the loop); the marks are raised only if due."""
        async with self.context.db.read() as session:
            runs, ended, failed, held, newest = (await session.execute(_RUNS, {"label": label, "group_id": group_id})).one()
            if not runs:
                return
            alerts = (await session.scalars(
                sa.select(Alert).join(User, User.id == Alert.creator_id).where(Alert.group_id == group_id, Alert.label == label, _CREATOR_MAY)
            )).all()
            group = await self.context.group_name(session, group_id)
        counts = AlertCounts(runs=runs, succeeded=ended - failed, failed=failed, running=held, waiting=runs - ended - held)
        due: list[tuple[Alert, AlertEvent, Any]] = []
        for alert in alerts:
            if AlertEvent.done.value in alert.events and ended == runs and newest > alert.done_mark:
                due.append((alert, AlertEvent.done, Alert.done_mark))
            threshold = alert.failures if alert.failures is not None else (alert.failure_share or 0) * runs
            # (a share of the runs is compared with a margin: 0.3 * 10 is 3.0000000000000004)
            if AlertEvent.failures.value in alert.events and failed and failed >= threshold - 1e-9 and newest > alert.failures_mark:
                due.append((alert, AlertEvent.failures, Alert.failures_mark))
        if due:
            async with self.context.db.write() as session:
                for alert, event, mark in due:
                    await self._fire(session, alert, event, mark, newest, group, counts)

    async def _fire(
        self, session: AsyncSession, alert: Alert, event: AlertEvent, mark: Any, newest: int, group: str, counts: AlertCounts,
    ) -> None:
        moment = _now()
        raised = await session.execute(
            sa.update(Alert).where(Alert.id == alert.id, mark < newest)
            .values({mark: newest, Alert.fired_at: moment, Alert.last_event: event, Alert.delivery: "waiting to be sent"})
        )
        if raised.rowcount != 1:  # another coordinator fired it first
            return
        threshold = counted(alert.failures, "run") if alert.failures is not None else f"{alert.failure_share or 0:.0%} of the runs"
        payload = AlertPayload(
            event=event, alert=alert.id, group=group, label=alert.label, counts=counts, failures=alert.failures,
            failure_share=alert.failure_share, at=moment, text=_summary(event, alert.label, group, counts, threshold),
        )
        delivery = Delivery(alert.id, alert.url, alert.secret, event, payload.model_dump_json().encode(), uuid_module.uuid4().hex)
        log.info("alerts: alert %d fired %s (%s)", alert.id, event.value, payload.text)
        after_commit(session, lambda: self._enqueue(delivery))

    def _enqueue(self, delivery: Delivery) -> None:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            log.warning("alerts: %d webhook deliveries wait already: alert %d's %s is dropped", QUEUED_DELIVERIES, delivery.alert_id, delivery.event.value)
            self._spawn(self._record(delivery.alert_id, f"dropped: {QUEUED_DELIVERIES} deliveries were waiting to be sent"))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_forever(self) -> None:
        while True:
            await self._slots.acquire()
            delivery = await self._queue.get()
            self._spawn(self._deliver(delivery))

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            refused = self._host_refused(delivery.url)
            outcome = await self._attempts(delivery) if refused is None else f"not sent: {refused}"
            await self._record(delivery.alert_id, outcome)
        finally:
            self._slots.release()

    async def _attempts(self, delivery: Delivery) -> str:
        """POST until the receiver takes it, refuses it, or the attempts run out; what it came to."""
        config = self.context.config
        attempts, timeout = config.alert_attempts, config.alert_timeout.total_seconds()
        wait = config.alert_backoff.total_seconds()
        assert self._http is not None
        for attempt in range(1, attempts + 1):
            timestamp = str(int(time.time()))
            request = HTTPRequest(
                delivery.url, "POST", body=delivery.body, connect_timeout=timeout, request_timeout=timeout, follow_redirects=False,
                streaming_callback=lambda chunk: None,  # the answer's body is not kept
                headers={
                    "Content-Type": "application/json", "User-Agent": f"mito_lab/{__version__}",
                    "X-Mito-Event": delivery.event.value, "X-Mito-Delivery": delivery.delivery_id,
                    ALERT_TIMESTAMP_HEADER: timestamp, ALERT_SIGNATURE_HEADER: alert_signature(delivery.secret, timestamp, delivery.body),
                },
            )
            try:
                answer = await self._http.fetch(request, raise_error=False)
                status, outcome = answer.code, f"HTTP {answer.code}"
            except HTTPClientError as exc:  # 599: refused, reset, timed out
                status, outcome = exc.code, str(exc.message or exc)
            except Exception as exc:  # what else a connection can raise (name resolution, TLS): not the coordinator's failure
                status, outcome = 0, f"{type(exc).__name__}: {exc}"
            where = f"alert {delivery.alert_id}'s {delivery.event.value} to {_origin(delivery.url)} (delivery {delivery.delivery_id})"
            if 200 <= status < 300:
                log.info("alerts: %s delivered: %s, attempt %d", where, outcome, attempt)
                return f"delivered: {outcome}, attempt {attempt} of {attempts}"
            if 400 <= status < 500 and status not in RETRIED_STATUSES:
                log.warning("alerts: %s refused by the receiver: %s", where, outcome)
                return f"refused by the receiver: {outcome}, attempt {attempt} of {attempts}"
            if attempt == attempts:
                log.warning("alerts: %s gave up after %d attempts: %s", where, attempts, outcome)
                break
            log.warning("alerts: %s attempt %d of %d failed: %s; retrying in %g s", where, attempt, attempts, outcome, wait)
            await self._record(delivery.alert_id, f"attempt {attempt} of {attempts} failed: {outcome}; retrying")
            await asyncio.sleep(wait)
            wait *= 2
        return f"gave up after {attempts} attempts: {outcome}"

    async def _record(self, alert_id: int, outcome: str) -> None:
        """What became of the alert's last delivery, for its listing (the alert may be gone)."""
        try:
            async with self.context.db.write() as session:
                await session.execute(sa.update(Alert).where(Alert.id == alert_id).values(delivery=outcome[:1024]))
        except Exception:  # the log has it; the listing shows an older state
            log.exception("alerts: recording alert %d's delivery failed", alert_id)
