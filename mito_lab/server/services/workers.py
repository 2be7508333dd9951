"""Workers: registration, the worker protocol (fetch, report, heartbeat, unregister) and liveness.

Dispatch is a conditional claim in the database, so any number of coordinators can serve one
PostgreSQL database (``FOR UPDATE SKIP LOCKED``) without handing a task to two workers. Fetches
long-poll: a waiting fetch is woken the moment a task becomes Ready in this process, and re-checks
the database every few seconds for tasks made Ready elsewhere.
"""

from __future__ import annotations

import logging
import uuid as uuid_module
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import (
    Attachment,
    Group,
    GroupWorker,
    Task,
    User,
    UserGroup,
    Worker,
    epoch_seconds,
)
from mito_lab.server.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    WrongCredentials,
)
from mito_lab.server.services.activity import (
    CANCEL,
    EVENTS,
    TASKS_READY,
    announce_ready,
    cancel_requested,
    long_poll,
    task_changed,
    tasks_created,
    worker_changed,
)
from mito_lab.server.services.context import Context
from mito_lab.server.services.dispatch import Dispatcher, WorkerIdentity
from mito_lab.server.services.groups import (
    SERVING_ROLES,
    by_names,
    group_by_name,
    group_with_role,
    require_grant,
    require_role,
)
from mito_lab.server.services.outputs import confirm_outputs, reserve_output
from mito_lab.server.services.uploads import attachment_object, settle_artifacts, settle_attachments
from mito_lab.server.services.tasks import (
    artifact_download,
    insert_tasks,
    load_task,
    now,
    require_readable_references,
    task_response,
)
from mito_lab.server.services.watch import reaches
from mito_lab.server.storage import download_url_lifetime
from mito_lab.wire import (
    ArtifactContentType,
    DownloadResp,
    ExchangeReq,
    ExchangeResp,
    RegisterWorkerReq,
    RegisterWorkerResp,
    ReportTaskReq,
    ReportTaskResp,
    Role,
    SubmitOp,
    TaskExecState,
    TaskQueryResp,
    TaskResultMessage,
    TaskReport,
    TaskState,
    UploadOp,
    UserState,
    WatchResp,
    WorkerFilter,
    WorkerInfo,
    WorkerQueryResp,
    WorkerShutdownOp,
    WorkerSignal,
    WorkersQueryReq,
    WorkersQueryResp,
    WorkersShutdownListReq,
    WorkersShutdownListResp,
    WorkersShutdownReq,
    WorkersShutdownResp,
    WorkerState,
    WorkerTaskResp,
)

log = logging.getLogger(__name__)

def parse_group_spec(spec: str) -> tuple[str, Role]:
    """``"name"`` or ``"name:role"``; the role defaults to Write."""
    name, _, role = spec.partition(":")
    if not name or ":" in role:
        raise InvalidRequest(f"invalid group {spec!r}: use NAME or NAME:read|write|admin")
    if not role:
        return name, Role.Write
    try:
        return name, Role(role)
    except ValueError:
        raise InvalidRequest(f"invalid role {role!r} in {spec!r}: use read, write or admin") from None


# The statements of every worker request, built once (building SQL costs more than running it here).
_WORKER_BY_UUID = sa.select(Worker).where(Worker.worker_id == sa.bindparam("worker_uuid"))
_WORKER_GROUP_NAMES = sa.select(Group.group_name).join(GroupWorker, GroupWorker.group_id == Group.id).where(
    GroupWorker.worker_id == sa.bindparam("worker_pk")
)
_ASSIGNED_TASK = sa.select(Task).where(
    Task.id == sa.bindparam("task_pk"), Task.assigned_worker_id == sa.bindparam("worker_pk"), Task.archived_at.is_(None)
)


# A worker that told its heartbeat interval is removed after this many of them without a heartbeat
# (or after the heartbeat timeout, if that is shorter). Five outlive a heartbeat lost now and then
# plus the worker's retry of it (retries come within an interval), and a few seconds of a coordinator
# too busy to record heartbeats at once, which short intervals (1-2 s) meet on a loaded machine:
# three would reap live workers there; more would keep dead workers' tasks waiting longer. At least
# the worker's HEARTBEATS_PER_TIMEOUT (3), so a worker that lowers its interval to fit the heartbeat
# timeout is still judged by the timeout.
SILENT_INTERVALS = 5


class WorkerService:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.dispatch = Dispatcher(context, retire=self.unregister)
        self._counting_from = now()  # see ``restore``

    # --- registration and authentication --------------------------------------------------------

    async def register(self, user: User, request: RegisterWorkerReq) -> RegisterWorkerResp:
        roles: dict[str, Role] = {}
        for spec in request.groups:
            name, role = parse_group_spec(spec)
            roles[name] = role
        roles[user.username] = Role.Admin  # the creator's personal group always administers it
        async with self.context.db.write() as session:
            groups = []
            for name, role in roles.items():
                group = await group_by_name(session, name)
                await require_grant(session, user, group, role)
                groups.append((group, role))
            interval = request.heartbeat_interval.total_seconds() if request.heartbeat_interval else None
            worker = Worker(creator_id=user.id, tags=request.tags, labels=request.labels, heartbeat_interval=interval)
            session.add(worker)
            await session.flush()
            session.add_all(GroupWorker(group_id=g.id, worker_id=worker.id, role=r) for g, r in groups)
            worker_uuid = worker.worker_id
            worker_changed(self.context, session, worker_uuid, list(roles), "registered", tags=request.tags)
            announce_ready(self.context, session)  # it may match tasks that are already waiting
        lifetime = request.lifetime or self.context.config.access_token_expires_in
        token = self.context.tokens.issue(str(worker_uuid), "worker", lifetime)
        log.info("worker %s registered by %s for %s", worker_uuid, user.username, sorted(roles))
        return RegisterWorkerResp(
            worker_id=worker_uuid, token=token, redis_url=None,  # see events.REFERENCE_ACL_USERS
            lifetime=lifetime, heartbeat_timeout=self.context.config.heartbeat_timeout, keeps_usage=True, exchanges_logs=True,
        )

    async def authenticate(self, bearer: str) -> WorkerIdentity:
        claims = self.context.tokens.verify(bearer, "worker")
        try:
            worker_uuid = uuid_module.UUID(claims.sub)
        except ValueError:
            raise WrongCredentials() from None
        return await self.dispatch.identities.get(worker_uuid)

    # --- dispatch -------------------------------------------------------------------------------

    async def fetch(self, worker: WorkerIdentity, wait: float, gone: Callable[[], bool]) -> WorkerTaskResp | None:
        """The reference's fetch: one task, waiting up to ``wait`` seconds for one. A worker of this
        protocol asks only when idle, so a task it holds but never started is one whose answer was
        lost (the coordinator died, the connection broke): it gets that task again."""
        answer = await self.dispatch.exchange(worker, ExchangeReq(want=1, holding=[]), wait, gone)
        return answer.tasks[0] if answer.tasks else None

    async def exchange(self, worker: WorkerIdentity, request: ExchangeReq, wait: float, gone: Callable[[], bool]) -> ExchangeResp:
        return await self.dispatch.exchange(worker, request, wait, gone)

    def close(self) -> None:
        """Answer every waiting long poll now: the coordinator is stopping (``context.closing``
        is set, so none waits again)."""
        self.dispatch.close()
        for channel in (TASKS_READY, CANCEL, EVENTS):
            self.context.events.publish(channel, {})

    # --- the worker protocol --------------------------------------------------------------------

    async def heartbeat(self, worker: WorkerIdentity, wait: float = 0) -> WorkerSignal | None:
        """Record the heartbeat. With ``wait``, also long-poll for cancellations of the worker's
        task: answer as soon as a user cancels it, or after ``wait`` seconds."""
        async with self.context.db.write() as session:
            moment = now()
            await session.execute(sa.update(Worker).where(Worker.id == worker.id).values(last_heartbeat=moment))
            await self._announce(session, worker, "heartbeat", last_heartbeat=moment.isoformat())
        if wait <= 0:
            return None

        taken: list[uuid_module.UUID] = []  # tasks taken back from it while it waits (no longer its own in the database)

        async def cancellations() -> WorkerSignal | None:
            async with self.context.db.read() as session:
                cancelled = (await session.scalars(
                    sa.select(Task.uuid).where(
                        Task.assigned_worker_id == worker.id, Task.archived_at.is_(None), Task.cancel_requested
                    )
                )).all()
            stop = [*cancelled, *taken]
            return WorkerSignal(cancel=stop) if stop else None

        mine = str(worker.worker_id)

        def relevant(event: dict[str, Any]) -> bool:
            if event.get("worker") != mine:
                return False
            if event.get("taken"):
                taken.append(uuid_module.UUID(event["task"]))
            return True

        return await long_poll(self.context, cancellations, CANCEL, relevant, wait) or WorkerSignal()

    async def report(self, worker: WorkerIdentity, request: ReportTaskReq) -> ReportTaskResp:
        """The reference's report on one task: outcomes, exec states and live output go through the
        same rules as a batched exchange; uploads and downstream submissions are handled here."""
        op = request.op
        if not isinstance(op, UploadOp | SubmitOp):
            answer = await self.dispatch.exchange(worker, ExchangeReq(reports=[TaskReport(id=request.id, ops=[op])]))
            for refusal in answer.refused:
                raise NotFound(f"Task {request.id}") if refusal.status == 404 else InvalidRequest(refusal.msg)
            return ReportTaskResp(url=None)
        async with self.context.db.write() as session:
            task = await session.scalar(_ASSIGNED_TASK, {"task_pk": request.id, "worker_pk": worker.id})
            if task is None:
                raise NotFound(f"Task {request.id}")
            if isinstance(op, UploadOp):
                upload = await reserve_output(self.context, session, task, op.Upload.content_type, op.Upload.content_length)
                task.updated_at = now()
                return ReportTaskResp(url=upload.url)
            else:
                await self._submit_downstream(session, worker, task, op)
        return ReportTaskResp(url=None)

    async def _submit_downstream(self, session: AsyncSession, worker: WorkerIdentity, task: Task, op: SubmitOp) -> None:
        """A task that finished chains one Pending task into its own group; it becomes Ready when
        this one commits. It is submitted as its creator, checked as a direct submit is, now: a
        creator who lost Write in the group, or was locked, chains nothing. A task that was
        cancelled, or timed out (Cancelled too), spawns nothing, whatever its worker says."""
        if task.state != TaskState.Finished or task.cancel_requested:
            raise InvalidRequest("Task can not spawn new tasks: " + (
                "it was cancelled" if task.cancel_requested or task.state == TaskState.Cancelled else "it has not finished"
            ))
        if task.downstream_task_uuid is not None:
            raise InvalidRequest("Task already has a downstream task")
        creator = await session.get_one(User, task.creator_id)
        if creator.state != UserState.Active:
            raise PermissionDenied(f"user {creator.username} is {creator.state.value}")
        group = await session.get_one(Group, task.group_id)
        request = op.Submit
        if request.group_name not in (None, group.group_name):
            raise InvalidRequest(f"Group name mismatch: a downstream task must go to group {group.group_name}")
        try:
            await require_role(session, creator, group, Role.Write)
        except PermissionDenied:
            raise PermissionDenied(f"user {creator.username} may no longer submit to group {group.group_name}") from None
        role = await session.scalar(
            sa.select(GroupWorker.role).where(GroupWorker.group_id == group.id, GroupWorker.worker_id == worker.id)
        )
        if role not in SERVING_ROLES:
            raise PermissionDenied(f"the worker cannot submit to group {group.group_name}")
        await require_readable_references(session, creator, request.task_spec)
        [downstream] = await insert_tasks(session, creator.id, [(group, request)], TaskState.Pending, task.uuid)
        task.downstream_task_uuid = downstream.uuid
        await tasks_created(self.context, session, [downstream])

    async def unregister(self, worker: WorkerIdentity) -> None:
        async with self.context.db.write() as session:
            current = await session.get(Worker, worker.id)
            if current is not None:
                await self._remove(session, current)
        log.info("worker %s unregistered", worker.worker_id)

    async def _remove(self, session: AsyncSession, worker: Worker, attempt_lost: bool = True) -> None:
        """Delete a worker; the tasks it held are taken back (``_take_back``)."""
        held = (await session.scalars(
            sa.select(Task).where(Task.assigned_worker_id == worker.id, Task.archived_at.is_(None))
        )).all()
        await self._take_back(session, worker, held, attempt_lost)
        await self._announce(session, worker, "removed")
        await session.execute(sa.delete(GroupWorker).where(GroupWorker.worker_id == worker.id))
        await session.delete(worker)

    async def _take_back(self, session: AsyncSession, worker: Worker, held: Sequence[Task], attempt_lost: bool) -> None:
        """Take ``held`` tasks from ``worker``. Each goes back to Ready, unless a user cancelled it
        or it has used up its attempts (then it ends Cancelled); a task that already reported its
        outcome keeps it and never runs again, unless its outputs were lost on the way (it runs
        again, or ends OutputsLost if it has used up its attempts). ``attempt_lost``: the worker
        was lost, and the task may be why, so the attempt counts; it does not when the coordinator
        takes the task away (its worker lost the right to run it)."""
        lost = await confirm_outputs(self.context, await session.connection(), [task.uuid for task in held])
        for task in held:
            moment = now()
            if task.state != TaskState.Running and task.uuid not in lost:
                task.archived_at = moment
            elif task.cancel_requested or (attempt_lost and task.attempts >= task.max_attempts):
                task.state, task.exit_status, task.archived_at, task.ended_at = TaskState.Cancelled, 0, moment, moment
                task.result_msg = (
                    TaskResultMessage.UserCancellation if task.cancel_requested
                    else TaskResultMessage.OutputsLost if task.uuid in lost else TaskResultMessage.AttemptsExhausted
                )
                log.warning("task %s ends %s: its worker %s is gone", task.uuid, task.result_msg.value, worker.worker_id)
            else:
                task.state, task.assigned_worker_id, task.exec_state, task.started_at = TaskState.Ready, None, None, None
                if attempt_lost:
                    log.warning("task %s re-queued (attempt %d of %d lost with worker %s)", task.uuid, task.attempts, task.max_attempts, worker.worker_id)
                else:
                    task.attempts -= 1
                    cancel_requested(self.context, session, worker.worker_id, task.uuid, taken=True)  # it stops it at once
                    log.warning("task %s re-queued: worker %s may no longer run it", task.uuid, worker.worker_id)
            task.updated_at = moment
            await task_changed(self.context, session, task)

    async def _detach(self, session: AsyncSession, worker: Worker, groups: Collection[Group]) -> None:
        """Take ``groups`` off the worker, and the tasks of theirs it holds back to the queue."""
        ids = [group.id for group in groups]
        await session.execute(sa.delete(GroupWorker).where(GroupWorker.worker_id == worker.id, GroupWorker.group_id.in_(ids)))
        held = (await session.scalars(
            sa.select(Task).where(Task.assigned_worker_id == worker.id, Task.archived_at.is_(None), Task.group_id.in_(ids))
        )).all()
        await self._take_back(session, worker, held, attempt_lost=False)
        await self._announce(session, worker, "changed", also_to=[group.group_name for group in groups])

    # --- revocation: what a user's grants reached ends with them (SPEC 7) -------------------------

    async def revoke_links(self, session: AsyncSession, group: Group, user_ids: Collection[int]) -> None:
        """After a membership change in ``group``: the workers of ``user_ids`` whose creator no
        longer holds Write there (removed, or now Read) stop serving it, whoever linked them.
        Called in the transaction of the change: the links go with the membership, at once."""
        still_writes = sa.exists().where(
            UserGroup.user_id == Worker.creator_id, UserGroup.group_id == group.id, UserGroup.role.in_(SERVING_ROLES)
        )
        workers = (await session.scalars(
            sa.select(Worker).join(GroupWorker, GroupWorker.worker_id == Worker.id)
            .where(GroupWorker.group_id == group.id, Worker.creator_id.in_(list(user_ids)), ~still_writes)
        )).all()
        for worker in workers:
            log.warning("worker %s leaves group %s: its creator no longer has Write there", worker.worker_id, group.group_name)
            await self._detach(session, worker, [group])

    async def retire_workers_of(self, session: AsyncSession, user_id: int) -> None:
        """A user locked or deleted: every worker they registered is shut down at once, and the
        tasks it held go back to the queue (in the transaction that changes the user's state)."""
        for worker in (await session.scalars(sa.select(Worker).where(Worker.creator_id == user_id))).all():
            log.warning("worker %s shut down: its creator can no longer use the platform", worker.worker_id)
            await self._remove(session, worker, attempt_lost=False)

    async def _announce(self, session: AsyncSession, worker: Worker | WorkerIdentity, event: str, also_to: Iterable[str] = (), **details: Any) -> None:
        """Tell the members of the worker's groups (and of ``also_to``, e.g. a group it just left)
        that it changed, once the transaction commits."""
        groups = (await session.scalars(_WORKER_GROUP_NAMES, {"worker_pk": worker.id})).all()
        worker_changed(self.context, session, worker.worker_id, sorted({*groups, *also_to}), event, **details)

    def restore(self) -> None:
        """At start, every known worker is counted alive from now on (reference 1.3, "restore
        workers"): a coordinator that was down must not declare its whole fleet dead; those that do
        not heartbeat again are removed once they were silent for as long as they may be since (see
        ``_silent``). Kept in this process, not written: another coordinator on the database goes
        on judging the workers by their heartbeats, and a coordinator starting beside it changes
        nothing for the workers it serves."""
        self._counting_from = now()

    def _silent(self) -> sa.ColumnElement[bool]:
        """The workers silent for longer than they may be: the heartbeat timeout, or
        ``SILENT_INTERVALS`` of the worker's own heartbeat interval if that is shorter, counted from
        its last heartbeat (on any coordinator: it is in the database) or from this coordinator's
        start, whichever is later."""
        moment = now()
        timeout = self.context.config.heartbeat_timeout.total_seconds()
        running = (moment - self._counting_from).total_seconds()
        allowed_own = SILENT_INTERVALS * Worker.heartbeat_interval  # NULL (the worker did not say): never true below
        by_own_interval = sa.and_(
            allowed_own < min(timeout, running), epoch_seconds(Worker.last_heartbeat) + allowed_own < moment.timestamp()
        )
        if running <= timeout:
            return by_own_interval
        return sa.or_(Worker.last_heartbeat < moment - self.context.config.heartbeat_timeout, by_own_interval)

    async def reap(self) -> None:
        """Remove the workers silent for longer than they may be (``_silent``); their tasks are
        taken back. Looked for first without a transaction: the check runs every second."""
        async with self.context.db.lookup() as connection:
            if await connection.scalar(sa.select(Worker.id).where(self._silent()).limit(1)) is None:
                return
        due = sa.select(Worker).where(self._silent())
        if not self.context.db.is_sqlite:
            # a row locked by a heartbeat under way, or by another coordinator reaping it, is not due here
            due = due.with_for_update(skip_locked=True)
        async with self.context.db.write() as session:
            for worker in (await session.scalars(due)).all():
                log.warning("worker %s missed its heartbeats: removing it", worker.worker_id)
                await self._remove(session, worker)

    # --- what a worker may read -----------------------------------------------------------------

    async def _serves_group_of(self, session: AsyncSession, worker: WorkerIdentity, task_uuid: uuid_module.UUID) -> tuple[Task, str, str]:
        task, creator, group_name = await load_task(session, task_uuid)
        linked = await session.scalar(
            sa.select(GroupWorker.id).where(GroupWorker.worker_id == worker.id, GroupWorker.group_id == task.group_id)
        )
        if linked is None:
            raise PermissionDenied(f"the worker is not attached to group {group_name}")
        return task, creator, group_name

    async def get_task(self, worker: WorkerIdentity, task_uuid: uuid_module.UUID) -> TaskQueryResp:
        await settle_artifacts(self.context, [task_uuid])
        async with self.context.db.read() as session:
            task, creator, group_name = await self._serves_group_of(session, worker, task_uuid)
            return await task_response(session, task, creator, group_name)

    async def download_artifact(
        self, worker: WorkerIdentity, task_uuid: uuid_module.UUID, content_type: ArtifactContentType
    ) -> DownloadResp:
        await settle_artifacts(self.context, [task_uuid])
        async with self.context.db.read() as session:
            await self._serves_group_of(session, worker, task_uuid)
            return await artifact_download(self.context, session, task_uuid, content_type)

    async def watch(self, worker: WorkerIdentity, task_uuid: uuid_module.UUID, target: TaskExecState, wait: float) -> WatchResp:
        """Long-poll until the task reaches ``target`` (or can no longer), at most ``wait`` seconds."""

        async def status(final: bool = False) -> WatchResp | None:
            async with self.context.db.read() as session:
                task, _, _ = await self._serves_group_of(session, worker, task_uuid)
            archived = task.archived_at is not None
            reached = reaches(task.exec_state, task.state, archived, task.result_msg, target)
            return WatchResp(reached=reached, possible=reached or not archived) if reached or archived or final else None

        watched = str(task_uuid)
        return await long_poll(self.context, status, EVENTS, lambda event: event.get("uuid") == watched, wait) or await status(final=True)  # type: ignore[return-value]

    async def download_attachment(self, worker: WorkerIdentity, task_uuid: uuid_module.UUID, key: str) -> DownloadResp:
        """An attachment of the group of the task this worker is running."""
        await settle_attachments(self.context, sa.select(Task.group_id).where(Task.uuid == task_uuid).scalar_subquery(), [key])
        async with self.context.db.read() as session:
            task, _, group_name = await load_task(session, task_uuid)
            if task.assigned_worker_id != worker.id or task.archived_at is not None:
                raise PermissionDenied("the worker is not running this task")
            attachment = await session.scalar(
                sa.select(Attachment).where(Attachment.group_id == task.group_id, Attachment.key == key)
            )
            if attachment is None:
                raise NotFound(f"Attachment {key} of group {group_name}")
            url = self.context.store.download_url(
                self.context.attachments_bucket, attachment_object(group_name, attachment), download_url_lifetime(attachment.size)
            )
            return DownloadResp(url=url, size=attachment.size)

    # --- management by users ------------------------------------------------------------------

    async def _worker(self, session: AsyncSession, worker_uuid: uuid_module.UUID) -> Worker:
        worker = await session.scalar(_WORKER_BY_UUID, {"worker_uuid": worker_uuid})
        if worker is None:
            raise NotFound(f"Worker {worker_uuid}")
        return worker

    async def _has_access(self, session: AsyncSession, user: User | None, worker: Worker, role: Role, links: Collection[Role] | None = None) -> bool:
        """Whether the caller has ``role`` in some group whose link to the worker is one of
        ``links`` (default: ``role`` or above). Reference 6.5: Read to see the worker, Write to
        retag it, Admin to shut it down or change its groups. ``user=None`` is the administrators' route."""
        if user is None:
            return True
        allowed = await session.scalar(
            sa.select(GroupWorker.id)
            .join(UserGroup, UserGroup.group_id == GroupWorker.group_id)
            .where(
                GroupWorker.worker_id == worker.id,
                GroupWorker.role.in_(links or role.and_above()),
                UserGroup.user_id == user.id,
                UserGroup.role.in_(role.and_above()),
            )
            .limit(1)
        )
        return allowed is not None

    async def _require_access(self, session: AsyncSession, user: User | None, worker: Worker, role: Role) -> None:
        if not await self._has_access(session, user, worker, role):
            raise PermissionDenied(f"this needs role {role.value} in a group with {role.value} on the worker")

    async def _require_shutdown_right(self, session: AsyncSession, user: User | None, worker: Worker) -> None:
        """Admin in a group with Admin on the worker (reference 6.5), or Admin in a group the
        worker serves: a group's Admins can always stop what runs their group's tasks."""
        if not await self._has_access(session, user, worker, Role.Admin, links=SERVING_ROLES):
            raise PermissionDenied("this needs role Admin in a group the worker serves")

    async def _info(self, session: AsyncSession, worker: Worker) -> WorkerInfo:
        creator = await session.scalar(sa.select(User.username).where(User.id == worker.creator_id))
        current = await session.scalar(
            sa.select(Task.uuid).where(Task.assigned_worker_id == worker.id, Task.archived_at.is_(None))
        )
        return WorkerInfo(
            worker_id=worker.worker_id, creator_username=creator or "", tags=worker.tags, labels=worker.labels,
            created_at=worker.created_at, updated_at=worker.updated_at, state=worker.state,
            last_heartbeat=worker.last_heartbeat, assigned_task_id=current,
        )

    async def describe(self, user: User, worker_uuid: uuid_module.UUID) -> WorkerQueryResp:
        async with self.context.db.read() as session:
            worker = await self._worker(session, worker_uuid)
            await self._require_access(session, user, worker, Role.Read)
            rows = await session.execute(
                sa.select(Group.group_name, GroupWorker.role)
                .join(GroupWorker, GroupWorker.group_id == Group.id)
                .where(GroupWorker.worker_id == worker.id)
                .order_by(Group.group_name)
            )
            return WorkerQueryResp(info=await self._info(session, worker), groups=dict(rows.all()))

    async def _matching(self, session: AsyncSession, group: Group, request: WorkerFilter, roles: list[Role]) -> list[Worker]:
        query = (
            sa.select(Worker)
            .join(GroupWorker, GroupWorker.worker_id == Worker.id)
            .where(GroupWorker.group_id == group.id, GroupWorker.role.in_(roles))
            .order_by(Worker.id.desc())
        )
        if request.creator_username:
            query = query.join(User, User.id == Worker.creator_id).where(User.username == request.creator_username)
        workers = (await session.scalars(query)).all()
        # tags and labels: "contains all", on the JSON lists (a group has tens of workers, not millions)
        return [
            w for w in workers
            if set(request.tags or ()) <= set(w.tags) and set(request.labels or ()) <= set(w.labels)
        ]

    async def query(self, user: User, request: WorkersQueryReq) -> WorkersQueryResp:
        async with self.context.db.read() as session:
            group = await group_with_role(session, user, request.group_name, Role.Read)
            workers = await self._matching(session, group, request, request.role or list(Role))
            infos = [] if request.count else [await self._info(session, w) for w in workers]
            return WorkersQueryResp(count=len(workers), workers=infos, group_name=group.group_name)

    async def update_tags(self, user: User, worker_uuid: uuid_module.UUID, tags: list[str] | None = None, labels: list[str] | None = None) -> None:
        """New tags apply at the worker's next fetch (the queue is the database, not a cache)."""
        async with self.context.db.write() as session:
            worker = await self._worker(session, worker_uuid)
            await self._require_access(session, user, worker, Role.Write)
            if tags is not None:
                worker.tags = tags
            if labels is not None:
                worker.labels = labels
            await self._announce(session, worker, "changed")
            announce_ready(self.context, session)

    async def set_groups(self, user: User | None, worker_uuid: uuid_module.UUID, relations: dict[str, Role]) -> None:
        async with self.context.db.write() as session:
            worker = await self._worker(session, worker_uuid)
            await self._require_access(session, user, worker, Role.Admin)
            groups = await by_names(session, Group.group_name, list(relations), "groups")
            links = {link.group_id: link for link in (await session.scalars(sa.select(GroupWorker).where(GroupWorker.worker_id == worker.id))).all()}
            for name, role in relations.items():
                group = groups[name]
                await require_grant(session, user, group, role)
                if group.id in links:
                    links[group.id].role = role
                else:
                    session.add(GroupWorker(group_id=group.id, worker_id=worker.id, role=role))
            await session.flush()
            await self._announce(session, worker, "changed")
            announce_ready(self.context, session)

    async def remove_groups(self, user: User | None, worker_uuid: uuid_module.UUID, names: list[str]) -> None:
        """Take groups off a worker: those with Admin on the worker may take any; a group's
        Admins may always take their own group off any worker. The tasks of those groups that the
        worker holds go back to the queue."""
        async with self.context.db.write() as session:
            worker = await self._worker(session, worker_uuid)
            if user is not None and not await self._has_access(session, user, worker, Role.Admin):
                administered = set((await session.scalars(
                    sa.select(Group.group_name).join(UserGroup, UserGroup.group_id == Group.id)
                    .where(UserGroup.user_id == user.id, UserGroup.role == Role.Admin, Group.group_name.in_(names))
                )).all())
                for name in names:
                    if name not in administered:
                        raise PermissionDenied(f"this needs role Admin in group {name}, or in a group with Admin on the worker")
            groups = await by_names(session, Group.group_name, names, "groups")
            await self._detach(session, worker, list(groups.values()))

    async def _shut_down(self, session: AsyncSession, worker: Worker, op: WorkerShutdownOp) -> None:
        """Force: remove now (its task is re-queued). Graceful: an idle worker goes now, a busy one
        finishes its task and goes at its commit."""
        if op is WorkerShutdownOp.Graceful:
            busy = await session.scalar(
                sa.select(Task.id).where(Task.assigned_worker_id == worker.id, Task.archived_at.is_(None))
            )
            if busy is not None:
                worker.state = WorkerState.GracefulShutdown
                await self._announce(session, worker, "changed")
                return
        log.info("worker %s shut down (%s)", worker.worker_id, op.value)
        await self._remove(session, worker)

    async def shutdown(self, user: User | None, worker_uuid: uuid_module.UUID, op: WorkerShutdownOp) -> None:
        async with self.context.db.write() as session:
            worker = await self._worker(session, worker_uuid)
            await self._require_shutdown_right(session, user, worker)
            await self._shut_down(session, worker, op)

    async def shutdown_many(self, user: User, request: WorkersShutdownReq) -> WorkersShutdownResp:
        """Shut down the workers that serve the group (default: personal) and match the filter: the
        group's Admin may stop any of them (``_require_shutdown_right``)."""
        async with self.context.db.write() as session:
            group = await group_with_role(session, user, request.group_name, Role.Admin)
            workers = await self._matching(session, group, request, list(SERVING_ROLES))
            for worker in workers:
                await self._shut_down(session, worker, request.op)
        return WorkersShutdownResp(shutdown_count=len(workers), group_name=group.group_name)

    async def shutdown_list(self, user: User, request: WorkersShutdownListReq) -> WorkersShutdownListResp:
        done: list[uuid_module.UUID] = []
        async with self.context.db.write() as session:
            for worker_uuid in request.uuids:
                worker = await session.scalar(_WORKER_BY_UUID, {"worker_uuid": worker_uuid})
                if worker is None:
                    continue
                try:
                    await self._require_shutdown_right(session, user, worker)
                except PermissionDenied:
                    continue
                await self._shut_down(session, worker, request.op)
                done.append(worker_uuid)
        return WorkersShutdownListResp(shutdown_count=len(done), failed_uuids=[u for u in request.uuids if u not in done])
