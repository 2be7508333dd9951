"""Tasks and their artifacts, for users."""

import uuid

from mito_lab.server.errors import InvalidRequest
from mito_lab.server.handlers.base import UUID_PATTERN, ApiHandler
from mito_lab.wire import (
    ArtifactContentType,
    ArtifactsFilterReq,
    ArtifactsListReq,
    BatchSubmitReq,
    ChangeTaskReq,
    SubmitTaskReq,
    TasksCancelReq,
    TasksQueryReq,
    UpdateLabelsReq,
    UploadArtifactReq,
    UuidsReq,
)

TASK = rf"(?P<task_uuid>{UUID_PATTERN})"


def content_type(value: str) -> ArtifactContentType:
    try:
        return ArtifactContentType(value)
    except ValueError:
        raise InvalidRequest(f"unknown artifact type {value!r} (result, exec-log or std-log)") from None


class TasksHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.submit(user, self.body(SubmitTaskReq)))


class BatchSubmitHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.submit_many(user, self.body(BatchSubmitReq)))


class TaskHandler(ApiHandler):
    async def get(self, task_uuid: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.get(user, uuid.UUID(task_uuid)))

    async def put(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.change(user, uuid.UUID(task_uuid), self.body(ChangeTaskReq))
        self.send(None)

    async def delete(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.cancel(user, uuid.UUID(task_uuid))
        self.send(None)


class TaskLabelsHandler(ApiHandler):
    async def put(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.update_labels(user, uuid.UUID(task_uuid), self.body(UpdateLabelsReq).labels)
        self.send(None)


class TasksQueryHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.query(user, self.body(TasksQueryReq)))


class TasksCancelHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.cancel_many(user, self.body(TasksCancelReq)))


class TasksCancelListHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.cancel_list(user, self.body(UuidsReq).uuids))


class TaskArtifactsHandler(ApiHandler):
    async def post(self, task_uuid: str) -> None:
        user = await self.user()
        request = self.body(UploadArtifactReq)
        self.send(
            await self.mito.tasks.upload_artifact(user, uuid.UUID(task_uuid), request.content_type, request.content_length)
        )


class TaskArtifactHandler(ApiHandler):
    async def delete(self, task_uuid: str, kind: str) -> None:
        user = await self.user()
        await self.mito.tasks.delete_artifact(user, uuid.UUID(task_uuid), content_type(kind))
        self.send(None)


class TaskArtifactDownloadHandler(ApiHandler):
    async def get(self, task_uuid: str, kind: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifact(user, uuid.UUID(task_uuid), content_type(kind)))


class ArtifactsDownloadHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifacts(user, self.body(ArtifactsFilterReq)))


class ArtifactsDownloadListHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifacts_list(user, self.body(ArtifactsListReq)))


class ArtifactsDeleteHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.delete_artifacts(user, self.body(ArtifactsFilterReq)))


class ArtifactsDeleteListHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.delete_artifacts_list(user, self.body(ArtifactsListReq)))


default_handlers = [
    (r"/tasks", TasksHandler),
    (r"/tasks/submit", BatchSubmitHandler),
    (r"/tasks/query", TasksQueryHandler),
    (r"/tasks/cancel", TasksCancelHandler),
    (r"/tasks/cancel/list", TasksCancelListHandler),
    (r"/tasks/download/artifacts", ArtifactsDownloadHandler),
    (r"/tasks/download/artifacts/list", ArtifactsDownloadListHandler),
    (r"/tasks/delete/artifacts", ArtifactsDeleteHandler),
    (r"/tasks/delete/artifacts/list", ArtifactsDeleteListHandler),
    (rf"/tasks/{TASK}", TaskHandler),
    (rf"/tasks/{TASK}/labels", TaskLabelsHandler),
    (rf"/tasks/{TASK}/artifacts", TaskArtifactsHandler),
    (rf"/tasks/{TASK}/artifacts/(?P<kind>[^/]+)", TaskArtifactHandler),
    (rf"/tasks/{TASK}/download/artifacts/(?P<kind>[^/]+)", TaskArtifactDownloadHandler),
]
