"""Workers: registration (user token) and the worker protocol (worker token)."""

import uuid

from mito_lab.server.errors import InvalidRequest
from mito_lab.server.handlers.base import ApiHandler
from mito_lab.server.handlers.tasks import TASK, content_type
from mito_lab.wire import MAX_FETCH_WAIT_SECONDS, RegisterWorkerReq, ReportTaskReq


class WorkersHandler(ApiHandler):
    async def post(self) -> None:
        """Register: needs a *user* token."""
        user = await self.user()
        self.send(await self.mito.workers.register(user, self.body(RegisterWorkerReq)))

    async def delete(self) -> None:
        """Unregister: needs the worker's own token."""
        worker = await self.worker()
        await self.mito.workers.unregister(worker)
        self.send(None, null=True)


class HeartbeatHandler(ApiHandler):
    async def post(self) -> None:
        worker = await self.worker()
        await self.mito.workers.heartbeat(worker)
        self.send(None, null=True)


class WorkerTasksHandler(ApiHandler):
    _gone = False

    def on_connection_close(self) -> None:
        self._gone = True

    async def get(self) -> None:
        """Fetch. ``?wait=SECONDS`` long-polls; without it the answer is immediate, as the reference."""
        worker = await self.worker()
        try:
            wait = float(self.get_query_argument("wait", "0"))
        except ValueError:
            raise InvalidRequest("wait must be a number of seconds") from None
        if not 0 <= wait <= MAX_FETCH_WAIT_SECONDS:
            raise InvalidRequest(f"wait must be between 0 and {MAX_FETCH_WAIT_SECONDS} seconds")
        task = await self.mito.workers.fetch(worker, wait, lambda: self._gone)
        if not self._gone:
            self.send(task, null=True)

    async def post(self) -> None:
        """Report Finish, Cancel, Upload, Submit or Commit for the worker's task."""
        worker = await self.worker()
        self.send(await self.mito.workers.report(worker, self.body(ReportTaskReq)))


class WorkerTaskHandler(ApiHandler):
    async def get(self, task_uuid: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.get_task(worker, uuid.UUID(task_uuid)))


class WorkerArtifactHandler(ApiHandler):
    async def get(self, task_uuid: str, kind: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.download_artifact(worker, uuid.UUID(task_uuid), content_type(kind)))


class WorkerAttachmentHandler(ApiHandler):
    async def get(self, task_uuid: str, key: str) -> None:
        worker = await self.worker()
        self.send(await self.mito.workers.download_attachment(worker, uuid.UUID(task_uuid), key))


default_handlers = [
    (r"/workers", WorkersHandler),
    (r"/workers/heartbeat", HeartbeatHandler),
    (r"/workers/tasks", WorkerTasksHandler),
    (rf"/workers/tasks/{TASK}", WorkerTaskHandler),
    (rf"/workers/tasks/{TASK}/artifacts/(?P<kind>[^/]+)", WorkerArtifactHandler),
    (rf"/workers/tasks/{TASK}/attachments/(?P<key>.+)", WorkerAttachmentHandler),
]
