"""Workers: registration (user token) and the worker protocol (worker token)."""

import uuid

from mito_lab.server.errors import InvalidRequest
from mito_lab.server.handlers.base import (
    MAX_JSON_BODY,
    TASK_JSON_BODY,
    UUID_PATTERN,
    ApiHandler,
    operation,
    query_argument,
    query_arguments,
    wait_argument,
)
from mito_lab.server.handlers.tasks import TASK, content_type
from mito_lab.wire import (
    DownloadResp,
    ExchangeReq,
    ExchangeResp,
    RegisterWorkerReq,
    RegisterWorkerResp,
    RemoveWorkerGroupsReq,
    ReportTaskReq,
    ReportTaskResp,
    TaskExecState,
    TaskQueryResp,
    UpdateLabelsReq,
    UpdateTagsReq,
    UpdateWorkerGroupsReq,
    WatchResp,
    WorkerQueryResp,
    WorkerShutdownOp,
    WorkerSignal,
    WorkersQueryReq,
    WorkersQueryResp,
    WorkersShutdownListReq,
    WorkersShutdownListResp,
    WorkersShutdownReq,
    WorkersShutdownResp,
    WorkerTaskResp,
)

WORKER = rf"(?P<worker_uuid>{UUID_PATTERN})"


def shutdown_op(handler: ApiHandler) -> WorkerShutdownOp:
    try:
        return WorkerShutdownOp(query_argument(handler, "op", "graceful"))
    except ValueError:
        raise InvalidRequest("op must be graceful or force") from None


class WorkersHandler(ApiHandler):
    @operation("Register a worker (user token)", RegisterWorkerReq, RegisterWorkerResp, max_body=TASK_JSON_BODY)
    async def post(self) -> None:
        """Register: needs a *user* token."""
        user = await self.user()
        self.send(await self.mito.workers.register(user, self.body()))

    @operation("Unregister (worker token); its task goes back to Ready", auth="worker", answer="null")
    async def delete(self) -> None:
        """Unregister: needs the worker's own token."""
        worker = await self.worker()
        await self.mito.workers.unregister(worker)
        self.send(None, null=True)


class HeartbeatHandler(ApiHandler):
    @operation(
        "Heartbeat; with ?wait, also long-poll for cancellations of the worker's task",
        response=WorkerSignal, auth="worker", nullable=True,
        query={"wait": "seconds to wait for a cancellation (0 to 600); without it the answer is null"},
    )
    async def post(self) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.heartbeat(worker, wait_argument(self)), null=True)


class WorkerTasksHandler(ApiHandler):
    _gone = False

    def on_connection_close(self) -> None:
        self._gone = True

    @operation("Fetch a task, or null", response=WorkerTaskResp, auth="worker", nullable=True, query={"wait": "seconds to long-poll for a task (0 to 600)"})
    async def get(self) -> None:
        """Fetch. ``?wait=SECONDS`` long-polls; without it the answer is immediate, as the reference."""
        worker = await self.worker()
        task = await self.mito.workers.fetch(worker, wait_argument(self), lambda: self._gone)
        if not self._gone:
            self.send(task, null=True)

    @operation("Report on the worker's task", ReportTaskReq, ReportTaskResp, auth="worker", max_body=TASK_JSON_BODY)
    async def post(self) -> None:
        """Report Finish, Cancel, Upload, Submit or Commit for the worker's task."""
        worker = await self.worker()
        self.send(await self.mito.workers.report(worker, self.body()))


class WorkerExchangeHandler(ApiHandler):
    _gone = False

    def on_connection_close(self) -> None:
        self._gone = True

    @operation(
        "Worker protocol v2: report on any number of the worker's tasks and take new ones",
        ExchangeReq, ExchangeResp, auth="worker", max_body=MAX_JSON_BODY,
        query={"wait": "with nothing reported and no task to take, seconds to long-poll for one (0 to 600)"},
    )
    async def post(self) -> None:
        worker = await self.worker()
        answer = await self.mito.workers.exchange(worker, self.body(), wait_argument(self), lambda: self._gone)
        if not self._gone:
            self.send(answer)


class WorkerTaskHandler(ApiHandler):
    @operation("A task of one of the worker's groups", response=TaskQueryResp, auth="worker")
    async def get(self, task_uuid: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.get_task(worker, uuid.UUID(task_uuid)))


class WorkerArtifactHandler(ApiHandler):
    @operation("An artifact download URL (a resource)", response=DownloadResp, auth="worker")
    async def get(self, task_uuid: str, kind: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.download_artifact(worker, uuid.UUID(task_uuid), content_type(kind)))


class WorkerAttachmentHandler(ApiHandler):
    @operation("An attachment of the running task's group (a resource)", response=DownloadResp, auth="worker")
    async def get(self, task_uuid: str, key: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.download_attachment(worker, uuid.UUID(task_uuid), key))


class WorkerHandler(ApiHandler):
    @operation("A worker and its groups", response=WorkerQueryResp)
    async def get(self, worker_uuid: str) -> None:
        user = await self.user()
        self.send(await self.mito.workers.describe(user, uuid.UUID(worker_uuid)))

    @operation("Shut a worker down", query={"op": "graceful (default) or force"})
    async def delete(self, worker_uuid: str) -> None:
        """Shut a worker down: ``?op=graceful`` (default) or ``?op=force``."""
        user = await self.user()
        await self.mito.workers.shutdown(user, uuid.UUID(worker_uuid), shutdown_op(self))
        self.send(None)


class WorkerTagsHandler(ApiHandler):
    @operation("Replace a worker's tags", UpdateTagsReq, max_body=TASK_JSON_BODY)
    async def put(self, worker_uuid: str) -> None:
        user = await self.user()
        await self.mito.workers.update_tags(user, uuid.UUID(worker_uuid), tags=self.body().tags)
        self.send(None)


class WorkerLabelsHandler(ApiHandler):
    @operation("Replace a worker's labels", UpdateLabelsReq, max_body=TASK_JSON_BODY)
    async def put(self, worker_uuid: str) -> None:
        user = await self.user()
        await self.mito.workers.update_tags(user, uuid.UUID(worker_uuid), labels=self.body().labels)
        self.send(None)


class WorkerGroupsHandler(ApiHandler):
    @operation("Give groups roles on a worker", UpdateWorkerGroupsReq)
    async def put(self, worker_uuid: str) -> None:
        user = await self.user()
        await self.mito.workers.set_groups(user, uuid.UUID(worker_uuid), self.body().relations)
        self.send(None)

    @operation("Take groups off a worker", query={"groups": "a group name (repeat the parameter for several)"})
    async def delete(self, worker_uuid: str) -> None:
        """``DELETE /workers/{uuid}/groups?groups=a&groups=b``."""
        user = await self.user()
        names = query_arguments(self, "groups")
        if not names:
            raise InvalidRequest("give the groups to remove as ?groups=a&groups=b")
        await self.mito.workers.remove_groups(user, uuid.UUID(worker_uuid), names)
        self.send(None)


class WorkerGroupsRemoveHandler(ApiHandler):
    @operation("Take groups off a worker", RemoveWorkerGroupsReq)
    async def delete(self, worker_uuid: str) -> None:
        """The same, with a JSON body ``{"groups": [...]}`` (the reference's variant)."""
        user = await self.user()
        await self.mito.workers.remove_groups(user, uuid.UUID(worker_uuid), self.body().groups)
        self.send(None)


class WorkersQueryHandler(ApiHandler):
    @operation("Query the workers of a group", WorkersQueryReq, WorkersQueryResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.workers.query(user, self.body()))


class WorkersShutdownHandler(ApiHandler):
    @operation("Shut down the workers matching a filter", WorkersShutdownReq, WorkersShutdownResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.workers.shutdown_many(user, self.body()))


class WorkersShutdownListHandler(ApiHandler):
    @operation("Shut down the listed workers", WorkersShutdownListReq, WorkersShutdownListResp, max_body=MAX_JSON_BODY)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.workers.shutdown_list(user, self.body()))


class WorkerWatchHandler(ApiHandler):
    @operation(
        "Has a task reached an exec state (--watch)? Long-polls with ?wait",
        response=WatchResp, auth="worker", query={"wait": "seconds to wait for it (0 to 600)"},
    )
    async def get(self, task_uuid: str, state: str) -> None:
        worker = await self.worker()
        try:
            target = TaskExecState(state)
        except ValueError:
            raise InvalidRequest(f"unknown exec state {state!r}") from None
        self.send(await self.mito.workers.watch(worker, uuid.UUID(task_uuid), target, wait_argument(self)))


default_handlers = [
    (r"/workers", WorkersHandler),
    (r"/workers/heartbeat", HeartbeatHandler),
    (r"/workers/tasks", WorkerTasksHandler),
    (r"/workers/exchange", WorkerExchangeHandler),
    (rf"/workers/tasks/{TASK}", WorkerTaskHandler),
    (rf"/workers/tasks/{TASK}/artifacts/(?P<kind>[^/]+)", WorkerArtifactHandler),
    (rf"/workers/tasks/{TASK}/attachments/(?P<key>.+)", WorkerAttachmentHandler),
    (rf"/workers/tasks/{TASK}/reaches/(?P<state>[A-Za-z]+)", WorkerWatchHandler),
    (r"/workers/query", WorkersQueryHandler),
    (r"/workers/shutdown", WorkersShutdownHandler),
    (r"/workers/shutdown/list", WorkersShutdownListHandler),
    (rf"/workers/{WORKER}", WorkerHandler),
    (rf"/workers/{WORKER}/tags", WorkerTagsHandler),
    (rf"/workers/{WORKER}/labels", WorkerLabelsHandler),
    (rf"/workers/{WORKER}/groups", WorkerGroupsHandler),
    (rf"/workers/{WORKER}/groups/remove", WorkerGroupsRemoveHandler),
]
