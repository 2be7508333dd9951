"""Group attachments."""

from mito_lab.server.handlers.base import ApiHandler
from mito_lab.server.handlers.groups import GROUP
from mito_lab.wire import AttachmentKeysReq, AttachmentsQueryReq, UploadAttachmentReq


class AttachmentsHandler(ApiHandler):
    async def post(self, group: str) -> None:
        """Ask for an upload URL: ``{key, content_length}``."""
        user = await self.user()
        request = self.body(UploadAttachmentReq)
        self.send(await self.mito.attachments.upload(user, group, request.key, request.content_length))


class AttachmentHandler(ApiHandler):
    async def get(self, group: str, key: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.metadata(user, group, key))

    async def delete(self, group: str, key: str) -> None:
        user = await self.user()
        await self.mito.attachments.delete(user, group, key)
        self.send(None)

    async def post(self, group: str, key: str) -> None:
        """``POST /groups/{g}/attachments/query`` (the reference's route; keys are read with GET)."""
        if key != "query":
            self.send_error(405)
            return
        user = await self.user()
        self.send(await self.mito.attachments.query(user, group, self.body(AttachmentsQueryReq)))


class AttachmentDownloadHandler(ApiHandler):
    async def get(self, group: str, key: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.download(user, group, key))


class AttachmentsDownloadHandler(ApiHandler):
    async def post(self, group: str) -> None:
        user = await self.user()
        request = self.body(AttachmentsQueryReq)
        self.send(await self.mito.attachments.download_many(user, group, request.key, request.limit, request.offset))


class AttachmentsDownloadListHandler(ApiHandler):
    async def get(self, group: str) -> None:
        """An attachment whose key is "list" is still downloadable."""
        await AttachmentDownloadHandler.get(self, group, "list")  # type: ignore[arg-type]

    async def post(self, group: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.download_many(user, group, keys=self.body(AttachmentKeysReq).keys))


class AttachmentsDeleteHandler(ApiHandler):
    async def post(self, group: str) -> None:
        user = await self.user()
        request = self.body(AttachmentsQueryReq)
        self.send(await self.mito.attachments.delete_many(user, group, request.key, request.limit, request.offset))


class AttachmentsDeleteListHandler(ApiHandler):
    async def post(self, group: str) -> None:
        user = await self.user()
        self.send(await self.mito.attachments.delete_list(user, group, self.body(AttachmentKeysReq).keys))


default_handlers = [
    (rf"/groups/{GROUP}/attachments", AttachmentsHandler),
    (rf"/groups/{GROUP}/attachments/(?P<key>.+)", AttachmentHandler),
    (rf"/groups/{GROUP}/download/attachments", AttachmentsDownloadHandler),
    (rf"/groups/{GROUP}/download/attachments/list", AttachmentsDownloadListHandler),
    (rf"/groups/{GROUP}/download/attachments/(?P<key>.+)", AttachmentDownloadHandler),
    (rf"/groups/{GROUP}/delete/attachments", AttachmentsDeleteHandler),
    (rf"/groups/{GROUP}/delete/attachments/list", AttachmentsDeleteListHandler),
]
