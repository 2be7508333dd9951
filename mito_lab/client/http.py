"""One HTTP session for the SDK and the worker: JSON through the wire models, errors as exceptions,
and file transfers to and from signed URLs streamed in chunks (never whole in memory).

Requests go through libcurl (Tornado's ``CurlAsyncHTTPClient``): it keeps connections alive and
reuses them, and resolves a host name once (its DNS cache), where Tornado's own client opens a
connection, and asks a resolver thread for the address, for every request."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import pycurl
from pydantic import BaseModel, ValidationError
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop

ModelT = TypeVar("ModelT", bound=BaseModel)
# A long poll's HTTP timeout is its wait plus this, so the server answers before the client gives up.
LONG_POLL_SLACK_SECONDS = 30.0
Progress = Callable[[int], None]
MAX_ANSWER_BYTES = 256 * 1024 * 1024  # a JSON answer read into memory
MAX_TRANSFER_BYTES = 1 << 50  # a file streamed to disk
# Requests a session runs at once (more wait their turn): a long poll holds one the whole time.
DEFAULT_PARALLEL_REQUESTS = 10


class MitoError(Exception):
    """An error answer from the coordinator or the object store; ``status`` is the HTTP status."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg

    def __str__(self) -> str:
        return self.msg

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for it (its hook for exceptions that know better): the one line that
        says what went wrong, not the frames of the SDK it went through."""
        return [f"{type(self).__name__}: {self.msg}"]


class MitoRateLimited(MitoError):
    """429: the coordinator asks to wait ``retry_after`` seconds (its ``Retry-After``) before trying again."""

    def __init__(self, msg: str, retry_after: int | None) -> None:
        if retry_after is not None and "retry in" not in msg:
            msg = f"{msg} (retry in {retry_after} s)"
        super().__init__(429, msg)
        self.retry_after = retry_after


class MitoConnectionError(MitoError):
    """The server could not be reached at all (refused, unreachable, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach {url}: {reason}")


def _error_message(raw: bytes | None, fallback: str) -> str:
    if not raw:
        return fallback
    body = raw.decode("utf-8", "replace")
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("msg"), str):
            return data["msg"]
    except json.JSONDecodeError:
        pass
    if "<Message>" in body:  # S3 error documents are XML
        return body.split("<Message>", 1)[1].split("</Message>", 1)[0]
    return body.strip()[:500] or fallback


class _CurlClient(CurlAsyncHTTPClient):
    """Tornado's libcurl client, closable while a request is still under way (e.g. a cancelled long
    poll): libcurl re-arms its timer as ``close()`` drops that request, and the timer would then
    fire on the closed client (tornado#3289)."""

    def close(self) -> None:
        super().close()
        if self._timeout is not None:
            self.io_loop.remove_timeout(self._timeout)
            self._timeout = None


class HttpSession:
    """Talks to one coordinator with an optional bearer token, ``parallel`` requests at a time."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0, parallel: int = DEFAULT_PARALLEL_REQUESTS) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self.parallel = parallel
        self._loop: IOLoop | None = None
        self._clients: dict[int, _CurlClient] = {}  # by the largest answer they read

    def _client(self, max_answer: int) -> _CurlClient:
        """A client on the running event loop, made at its first request, and again when a request
        comes on another loop (``asyncio.run`` twice): libcurl's sockets are watched by the loop
        that made the client."""
        loop = IOLoop.current()
        if self._loop is not loop:
            self.close()
            self._loop = loop
        if max_answer not in self._clients:
            self._clients[max_answer] = _CurlClient(force_instance=True, max_clients=self.parallel, max_body_size=max_answer)
        return self._clients[max_answer]

    def close(self) -> None:
        """Close the connections. A request still under way is dropped: cancel its caller first."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._loop = None

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    def signed_url(self, url: str) -> str:
        """An object store's signed URL, followed as given: coordinators hand out absolute ones.
        A relative one (the local store of a coordinator from before ``public_url``) is the
        coordinator's own route."""
        return url if urlsplit(url).scheme else self.url(url)

    async def _fetch(self, request: HTTPRequest, max_answer: int = MAX_ANSWER_BYTES) -> HTTPResponse:
        try:
            return await self._client(max_answer).fetch(request)
        except HTTPClientError as exc:
            if exc.code == 599:  # libcurl's own errors: refused, reset, timed out, unresolved
                raise MitoConnectionError(request.url, str(exc.message or "timeout")) from None
            raw = exc.response.body if exc.response is not None else None
            message = _error_message(raw, f"HTTP {exc.code}")
            if exc.code == 429:
                retry_after = exc.response.headers.get("Retry-After", "") if exc.response is not None else ""
                raise MitoRateLimited(message, int(retry_after) if retry_after.isdigit() else None) from None
            raise MitoError(exc.code, message) from None

    def _json_request(
        self, method: str, path: str, body: BaseModel | None,
        *, timeout: float | None = None, query: str = "", wait: float | None = None, **options: Any,
    ) -> HTTPRequest:
        """``body`` as JSON to ``path``; ``wait`` makes it a long poll: ``?wait=SECONDS``, with the
        HTTP timeout stretched to match."""
        if wait:
            query += f"{'&' if query else '?'}wait={wait:g}"
            timeout = wait + LONG_POLL_SLACK_SECONDS
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = body.model_dump_json(exclude_none=False).encode() if body is not None else None
        if payload is None and method in ("POST", "PUT"):
            payload = b""
        return HTTPRequest(
            self.url(path) + query,
            method=method,
            headers=headers,
            body=payload,
            request_timeout=timeout or self.timeout,
            allow_nonstandard_methods=True,
            **options,
        )

    async def call(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        response: type[ModelT] | None = None,
        *,
        timeout: float | None = None,
        query: str = "",
        wait: float | None = None,
    ) -> Any:
        """Send ``body`` as JSON; parse the answer into ``response`` (``None`` for an empty or null body)."""
        answer = await self._fetch(self._json_request(method, path, body, timeout=timeout, query=query, wait=wait))
        text = answer.body.decode("utf-8") if answer.body else ""
        if response is None:
            return text
        if not text or text == "null":
            return None
        try:
            return response.model_validate_json(text)
        except ValidationError as exc:
            raise MitoError(answer.code, f"unexpected answer from {path}: {exc.errors()[0]['msg']}") from None

    async def call_binary(self, method: str, path: str, body: BaseModel | None = None) -> bytearray:
        """Send ``body`` as JSON; the answer's bytes (e.g. an Arrow stream), received in chunks and,
        unlike a JSON answer, not bounded by ``MAX_ANSWER_BYTES``."""
        received = bytearray()
        request = self._json_request(method, path, body, streaming_callback=received.extend)
        try:
            await self._fetch(request, MAX_TRANSFER_BYTES)
        except MitoError as exc:
            if exc.status:  # an error body went to the streaming callback: read its message
                exc.msg = _error_message(bytes(received[:65536]), exc.msg)
            raise
        return received

    async def upload_file(self, url: str, path: Path, progress: Progress | None = None) -> None:
        """PUT a file to a signed URL, streamed, as ``application/octet-stream``."""
        size = path.stat().st_size
        loop = asyncio.get_running_loop()
        with path.open("rb") as handle:

            def read(amount: int) -> bytes:
                chunk = handle.read(amount)
                if progress and chunk:
                    loop.call_soon(progress, len(chunk))  # not inside libcurl's callback
                return chunk

            def rewind(offset: int, origin: int) -> int:
                """libcurl sends the body again when a kept-alive connection turns out closed."""
                handle.seek(offset, origin)
                return pycurl.SEEKFUNC_OK

            def stream_body(curl: pycurl.Curl) -> None:
                # Tornado's libcurl client sends ``body`` from memory: read the file instead
                curl.setopt(pycurl.READFUNCTION, read)
                curl.setopt(pycurl.SEEKFUNCTION, rewind)
                curl.setopt(pycurl.INFILESIZE_LARGE, size)

            request = HTTPRequest(
                self.signed_url(url),
                method="PUT",
                headers={"Content-Type": "application/octet-stream"},
                body=b"",
                prepare_curl_callback=stream_body,
                request_timeout=max(self.timeout, size / 5_000_000 + 60),
            )
            await self._fetch(request)

    async def download_file(self, url: str, path: Path, progress: Progress | None = None) -> int:
        """GET a signed URL into ``path`` (written to a temporary file, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        received = 0
        with partial.open("wb") as handle:

            def consume(chunk: bytes) -> None:
                nonlocal received
                handle.write(chunk)
                received += len(chunk)
                if progress:
                    progress(len(chunk))

            request = HTTPRequest(self.signed_url(url), streaming_callback=consume, request_timeout=24 * 3600)
            try:
                # the answer is streamed to a file, so its size is not bounded by memory
                await self._fetch(request, MAX_TRANSFER_BYTES)
            except MitoError as exc:
                handle.close()
                if exc.status:  # an error body went to the streaming callback: read its message
                    exc.msg = _error_message(partial.read_bytes()[:65536], exc.msg)
                partial.unlink(missing_ok=True)
                raise
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, path)
        return received
