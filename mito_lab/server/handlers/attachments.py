"""Group attachments."""

from mito_lab.server.errors import NotFound
from mito_lab.server.handlers.base import MAX_JSON_BODY, ApiHandler, operation
from mito_lab.server.handlers.groups import GROUP
from mito_lab.wire import (
    AttachmentKeysReq,
    AttachmentMetadata,
    AttachmentsDownloadResp,
    AttachmentsQueryReq,
    AttachmentsQueryResp,
    DeleteAttachmentsListResp,
    DeleteAttachmentsResp,
    DownloadResp,
    UploadAttachmentReq,
    UploadResp,
)


class AttachmentsHandler(ApiHandler):
    @operation("Ask for an attachment upload URL", UploadAttachmentReq, UploadResp)
    async def post(self, group: str) -> None:
        """Ask for an upload URL: ``{key, content_length}``."""
        user = await self.user()
        request = self.body()
        self.send(await self.mito.attachments.upload(user, group, request.key, request.content_length))


class AttachmentHandler(ApiHandler):
    @operation("An attachment's metadata", response=AttachmentMetadata)
    async def get(self, group: str, key: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.metadata(user, group, key))

    @operation("Delete an attachment (not within an hour of its upload)")
    async def delete(self, group: str, key: str) -> None:
        user = await self.user()
        await self.mito.attachments.delete(user, group, key)
        self.send(None)

    @operation("Query the group's attachments (the key must be `query`)", AttachmentsQueryReq, AttachmentsQueryResp)
    async def post(self, group: str, key: str) -> None:
        """``POST /groups/{g}/attachments/query`` (the reference's route; keys are read with GET)."""
        if key != "query":
            raise NotFound(f"Route POST {self.request.path}")
        user = await self.user()
        self.send(await self.mito.attachments.query(user, group, self.body()))


class AttachmentDownloadHandler(ApiHandler):
    @operation("An attachment's download URL", response=DownloadResp)
    async def get(self, group: str, key: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.download(user, group, key))


class AttachmentsDownloadHandler(ApiHandler):
    @operation("Download URLs of the attachments matching a key substring", AttachmentsQueryReq, AttachmentsDownloadResp)
    async def post(self, group: str) -> None:
        user = await self.user()
        request = self.body()
        self.send(await self.mito.attachments.download_many(user, group, request.key, request.limit, request.offset))


class AttachmentsDownloadListHandler(ApiHandler):
    @operation("The download URL of the attachment whose key is `list`", response=DownloadResp)
    async def get(self, group: str) -> None:
        """An attachment whose key is "list" is still downloadable."""
        await AttachmentDownloadHandler.get(self, group, "list")  # type: ignore[arg-type]

    @operation("Download URLs of the listed attachments", AttachmentKeysReq, AttachmentsDownloadResp, max_body=MAX_JSON_BODY)
    async def post(self, group: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.download_many(user, group, keys=self.body().keys))


class AttachmentsDeleteHandler(ApiHandler):
    @operation("Delete the attachments matching a key substring", AttachmentsQueryReq, DeleteAttachmentsResp)
    async def post(self, group: str) -> None:
        user = await self.user()
        request = self.body()
        self.send(await self.mito.attachments.delete_many(user, group, request.key, request.limit, request.offset))


class AttachmentsDeleteListHandler(ApiHandler):
    @operation("Delete the listed attachments", AttachmentKeysReq, DeleteAttachmentsListResp, max_body=MAX_JSON_BODY)
    async def post(self, group: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.delete_list(user, group, self.body().keys))


default_handlers = [
    (rf"/groups/{GROUP}/attachments", AttachmentsHandler),
    (rf"/groups/{GROUP}/attachments/(?P<key>.+)", AttachmentHandler),
    (rf"/groups/{GROUP}/download/attachments", AttachmentsDownloadHandler),
    (rf"/groups/{GROUP}/download/attachments/list", AttachmentsDownloadListHandler),
    (rf"/groups/{GROUP}/download/attachments/(?P<key>.+)", AttachmentDownloadHandler),
    (rf"/groups/{GROUP}/delete/attachments", AttachmentsDeleteHandler),
    (rf"/groups/{GROUP}/delete/attachments/list", AttachmentsDeleteListHandler),
]
