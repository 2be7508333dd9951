"""Tasks and their artifacts, for users."""

import uuid

from mito_lab.server.errors import InvalidRequest
from mito_lab.server.services.explain import explain
from mito_lab.server.handlers.base import (
    MAX_JSON_BODY,
    TASK_JSON_BODY,
    UUID_PATTERN,
    ApiHandler,
    number_argument,
    operation,
    query_argument,
    wait_argument,
)
from mito_lab.wire import (
    MAX_BATCH_TASKS,
    MAX_SIZE,
    ArtifactContentType,
    ArtifactsDownloadResp,
    ArtifactsFilterReq,
    ArtifactsListReq,
    BatchSubmitReq,
    BatchSubmitResp,
    CancelListResp,
    ChangeTaskReq,
    DeleteArtifactsListResp,
    DeleteArtifactsResp,
    DownloadResp,
    SubmitTaskReq,
    SubmitTaskResp,
    TaskLogResp,
    TaskQueryResp,
    TasksCancelReq,
    TaskWhyResp,
    TasksCancelResp,
    TasksQueryReq,
    TasksQueryResp,
    UpdateLabelsReq,
    UploadArtifactReq,
    UploadResp,
    UuidsReq,
    task_columns_schema,
)

TASK = rf"(?P<task_uuid>{UUID_PATTERN})"


def content_type(value: str) -> ArtifactContentType:
    try:
        return ArtifactContentType(value)
    except ValueError:
        raise InvalidRequest(f"unknown artifact type {value!r} (result, exec-log or std-log)") from None


class TasksHandler(ApiHandler):
    @operation("Submit a task", SubmitTaskReq, SubmitTaskResp, max_body=TASK_JSON_BODY)
    async def post(self) -> None:
        caller = await self.caller()
        self.send(await self.mito.tasks.submit(caller, self.body()))


class BatchSubmitHandler(ApiHandler):
    @operation(
        f"Submit several tasks (at most {MAX_BATCH_TASKS:,}; larger batches are committed in chunks)",
        BatchSubmitReq, BatchSubmitResp, max_body=MAX_JSON_BODY,
    )
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.submit_many(user, self.body()))


class TaskHandler(ApiHandler):
    @operation("A task and its artifacts", response=TaskQueryResp)
    async def get(self, task_uuid: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.get(user, uuid.UUID(task_uuid)))

    @operation("Change a task no worker holds yet", ChangeTaskReq, max_body=TASK_JSON_BODY)
    async def put(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.change(user, uuid.UUID(task_uuid), self.body())
        self.send(None)

    @operation("Cancel a task no worker holds yet")
    async def delete(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.cancel(user, uuid.UUID(task_uuid))
        self.send(None)


class TaskWhyHandler(ApiHandler):
    @operation("Why a task is where it is: its place in the queue, what it waits for, and each worker of its group", response=TaskWhyResp)
    async def get(self, task_uuid: str) -> None:
        user = await self.user()
        self.send(await explain(self.context, user, uuid.UUID(task_uuid)))


class TaskLabelsHandler(ApiHandler):
    @operation("Replace a task's labels", UpdateLabelsReq, max_body=TASK_JSON_BODY)
    async def put(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.update_labels(user, uuid.UUID(task_uuid), self.body().labels)
        self.send(None)


class TasksQueryHandler(ApiHandler):
    @operation("Query a group's tasks, newest first", TasksQueryReq, TasksQueryResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.query(user, self.body()))


class TasksColumnsHandler(ApiHandler):
    @operation("Query a group's tasks as columns (an Arrow IPC stream), newest first", TasksQueryReq,
               answer="arrow", columns=task_columns_schema)
    async def post(self) -> None:
        user = await self.user()
        await self.send_arrow(self.mito.tasks.query_columns(user, self.body()))


class TasksCancelHandler(ApiHandler):
    @operation("Cancel the Ready and Pending tasks matching a filter", TasksCancelReq, TasksCancelResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.cancel_many(user, self.body()))


class TasksCancelListHandler(ApiHandler):
    @operation("Cancel the listed tasks", UuidsReq, CancelListResp, max_body=MAX_JSON_BODY)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.cancel_list(user, self.body().uuids))


class TaskArtifactsHandler(ApiHandler):
    @operation("Ask for an artifact upload URL", UploadArtifactReq, UploadResp)
    async def post(self, task_uuid: str) -> None:
        user = await self.user()
        request = self.body()
        self.send(
            await self.mito.tasks.upload_artifact(user, uuid.UUID(task_uuid), request.content_type, request.content_length)
        )


class TaskArtifactHandler(ApiHandler):
    @operation("Delete an artifact (not within an hour of its upload)")
    async def delete(self, task_uuid: str, kind: str) -> None:
        user = await self.user()
        await self.mito.tasks.delete_artifact(user, uuid.UUID(task_uuid), content_type(kind))
        self.send(None)


class TaskArtifactDownloadHandler(ApiHandler):
    @operation("An artifact's download URL", response=DownloadResp)
    async def get(self, task_uuid: str, kind: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifact(user, uuid.UUID(task_uuid), content_type(kind)))


class ArtifactsDownloadHandler(ApiHandler):
    @operation("Download URLs of one artifact type of the tasks matching a filter", ArtifactsFilterReq, ArtifactsDownloadResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifacts(user, self.body()))


class ArtifactsDownloadListHandler(ApiHandler):
    @operation("Download URLs of one artifact type of the listed tasks", ArtifactsListReq, ArtifactsDownloadResp, max_body=MAX_JSON_BODY)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifacts_list(user, self.body()))


class ArtifactsDeleteHandler(ApiHandler):
    @operation("Delete one artifact type of the tasks matching a filter", ArtifactsFilterReq, DeleteArtifactsResp)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.delete_artifacts(user, self.body()))


class ArtifactsDeleteListHandler(ApiHandler):
    @operation("Delete one artifact type of the listed tasks", ArtifactsListReq, DeleteArtifactsListResp, max_body=MAX_JSON_BODY)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.delete_artifacts_list(user, self.body()))


class TaskLogsHandler(ApiHandler):
    @operation(
        "Live output of a task; long-polls with ?wait",
        response=TaskLogResp,
        query={"stream": "stdout (default) or stderr", "offset": "byte offset to read from (default 0)",
               "wait": "seconds to wait for output (0 to 600)"},
    )
    async def get(self, task_uuid: str) -> None:
        user = await self.user()
        stream = query_argument(self, "stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidRequest("stream must be stdout or stderr")
        offset = int(number_argument(self, "offset", 0, "a number of bytes", whole=True))
        if not 0 <= offset <= MAX_SIZE:
            raise InvalidRequest(f"offset must be between 0 and {MAX_SIZE} bytes")
        self.send(await self.mito.logs.read(user, uuid.UUID(task_uuid), stream, offset, wait_argument(self)))


default_handlers = [
    (r"/tasks", TasksHandler),
    (r"/tasks/submit", BatchSubmitHandler),
    (r"/tasks/query", TasksQueryHandler),
    (r"/tasks/query/columns", TasksColumnsHandler),
    (r"/tasks/cancel", TasksCancelHandler),
    (r"/tasks/cancel/list", TasksCancelListHandler),
    (r"/tasks/download/artifacts", ArtifactsDownloadHandler),
    (r"/tasks/download/artifacts/list", ArtifactsDownloadListHandler),
    (r"/tasks/delete/artifacts", ArtifactsDeleteHandler),
    (r"/tasks/delete/artifacts/list", ArtifactsDeleteListHandler),
    (rf"/tasks/{TASK}", TaskHandler),
    (rf"/tasks/{TASK}/labels", TaskLabelsHandler),
    (rf"/tasks/{TASK}/why", TaskWhyHandler),
    (rf"/tasks/{TASK}/logs", TaskLogsHandler),
    (rf"/tasks/{TASK}/artifacts", TaskArtifactsHandler),
    (rf"/tasks/{TASK}/artifacts/(?P<kind>[^/]+)", TaskArtifactHandler),
    (rf"/tasks/{TASK}/download/artifacts/(?P<kind>[^/]+)", TaskArtifactDownloadHandler),
]
