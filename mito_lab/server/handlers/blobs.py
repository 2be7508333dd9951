"""The local object store's URLs: signed, expiring, streamed both ways (never whole in memory).

An upload URL is single-use: its object is created, never replaced (every upload URL names an
object of its own, ``services/uploads.py``). A write the disk refuses answers 507 and leaves
nothing behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from tornado.iostream import StreamClosedError

from mito_lab.server.errors import InsufficientStorage, InvalidRequest, NotFound, PermissionDenied, UploadUrlUsed
from mito_lab.server.handlers.base import ApiHandler, query_argument
from mito_lab.server.storage import LocalStore

CHUNK = 1 << 20
# Bytes per second an upload must average: a fifth of what the SDK's own timeout asks (HttpSession.upload_file)
MIN_UPLOAD_RATE = 1_000_000


class BlobHandler(ApiHandler):
    _temp: tempfile._TemporaryFileWrapper | None = None  # type: ignore[type-arg]
    _declared = 0
    _write_error: OSError | None = None

    @property
    def store(self) -> LocalStore:
        store = self.context.store
        if not isinstance(store, LocalStore):
            raise NotFound("Route")
        return store

    def prepare(self) -> None:
        bucket, key = self.path_args
        method = self.request.method or ""
        if method not in ("GET", "PUT"):
            return  # tornado answers 405
        size = query_argument(self, "size")
        refusal = self.store.verify(
            method, bucket, key, query_argument(self, "expires", ""), query_argument(self, "sig", ""), size
        )
        if refusal:
            raise PermissionDenied(refusal)
        try:
            self._target = self.store.path(bucket, key)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if method == "PUT":
            self._declared = int(size or 0)
            if self.request.headers.get("Content-Length") != str(self._declared):
                raise InvalidRequest(f"Content-Length must be the signed size, {self._declared} bytes")
            self.request.connection.set_max_body_size(self._declared)  # type: ignore[union-attr]
            if self._target.exists():
                raise UploadUrlUsed()
            # the JSON routes' body timeout, plus the time the object takes at MIN_UPLOAD_RATE
            timeout = self.context.config.http_body_timeout.total_seconds() + self._declared / MIN_UPLOAD_RATE
            self.request.connection.set_body_timeout(timeout)  # type: ignore[union-attr]
            try:
                self._target.parent.mkdir(parents=True, exist_ok=True)
                self._temp = tempfile.NamedTemporaryFile(dir=self._target.parent, prefix=".upload-", delete=False)
            except OSError as exc:
                raise InsufficientStorage(f"the object store cannot write: {exc.strerror}") from None

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._temp is None:
            return  # the write failed: the rest of the body is read and dropped, then 507
        try:
            self._temp.write(chunk)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self._write_error = exc
        self._discard()

    async def put(self, bucket: str, key: str) -> None:
        if self._temp is not None:
            try:
                self._temp.close()  # writes out what is buffered: a full disk may only say so now
            except OSError as exc:
                self._fail(exc)
        if self._write_error is not None:
            raise InsufficientStorage(f"the object store could not write the upload: {self._write_error.strerror}")
        assert self._temp is not None
        if self._received != self._declared:
            raise InvalidRequest(f"received {self._received} bytes, expected {self._declared}")
        try:
            os.link(self._temp.name, self._target)  # created, never replaced: the URL is single-use
        except FileExistsError:
            raise UploadUrlUsed() from None
        self.finish(b"")

    async def get(self, bucket: str, key: str) -> None:
        path: Path = self._target
        if not path.is_file():
            raise NotFound(f"Object {bucket}/{key}")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(path.stat().st_size))
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                self.write(chunk)
                try:
                    await self.flush()
                except StreamClosedError:
                    return
        self.finish()

    def on_finish(self) -> None:
        self._discard()

    def on_connection_close(self) -> None:
        self._discard()

    def _discard(self) -> None:
        if self._temp is not None:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                self._temp.close()
            Path(self._temp.name).unlink(missing_ok=True)
            self._temp = None


default_handlers = [
    (r"/blobs/([^/]+)/(.+)", BlobHandler),
]

