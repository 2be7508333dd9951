"""Tasks and their artifacts, for users."""

import uuid

from mito_lab.server.handlers.base import UUID_PATTERN, ApiHandler
from mito_lab.server.errors import InvalidRequest
from mito_lab.wire import ArtifactContentType, SubmitTaskReq, TasksQueryReq, UploadArtifactReq


def content_type(value: str) -> ArtifactContentType:
    try:
        return ArtifactContentType(value)
    except ValueError:
        raise InvalidRequest(f"unknown artifact type {value!r} (result, exec-log or std-log)") from None


class TasksHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.submit(user, self.body(SubmitTaskReq)))


class TaskHandler(ApiHandler):
    async def get(self, task_uuid: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.get(user, uuid.UUID(task_uuid)))

    async def delete(self, task_uuid: str) -> None:
        user = await self.user()
        await self.mito.tasks.cancel(user, uuid.UUID(task_uuid))
        self.send(None)


class TasksQueryHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.query(user, self.body(TasksQueryReq)))


class TaskArtifactsHandler(ApiHandler):
    async def post(self, task_uuid: str) -> None:
        user = await self.user()
        request = self.body(UploadArtifactReq)
        self.send(
            await self.mito.tasks.upload_artifact(
                user, uuid.UUID(task_uuid), request.content_type, request.content_length
            )
        )


class TaskArtifactDownloadHandler(ApiHandler):
    async def get(self, task_uuid: str, kind: str) -> None:
        user = await self.user()
        self.send(await self.mito.tasks.download_artifact(user, uuid.UUID(task_uuid), content_type(kind)))


default_handlers = [
    (r"/tasks", TasksHandler),
    (r"/tasks/query", TasksQueryHandler),
    (rf"/tasks/(?P<task_uuid>{UUID_PATTERN})", TaskHandler),
    (rf"/tasks/(?P<task_uuid>{UUID_PATTERN})/artifacts", TaskArtifactsHandler),
    (rf"/tasks/(?P<task_uuid>{UUID_PATTERN})/download/artifacts/(?P<kind>[^/]+)", TaskArtifactDownloadHandler),
]
