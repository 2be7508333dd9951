"""The base handler: JSON in and out through the wire models, errors as ``{"msg": ...}``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError
from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from mito_lab.server.db.models import User
from mito_lab.server.errors import ApiError, DatabaseConnectionLost, InvalidRequest, InvalidToken, NotFound, PayloadTooLarge, ShuttingDown
from mito_lab.server.services.context import Context
from mito_lab.server.services.dispatch import WorkerIdentity
from mito_lab.server.services.users import Caller
from mito_lab.server.storage import ARRIVAL, Arrival
from mito_lab.wire import ARROW_STREAM, MAX_WAIT_SECONDS, describe_validation_error

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# The largest JSON body a route reads (its ``operation(max_body=...)``); a larger one is answered
# 413 before it is parsed, and before the token is looked at.
SMALL_JSON_BODY = 64 * 1024
"""Every route's limit unless it declares another: logins, passwords, names, filters, and the
routes that take no body at all (heartbeats, fetches)."""
TASK_JSON_BODY = 1024 * 1024
"""One task's spec, a worker's report (a live-output chunk, a downstream task), lists of tags or
labels: as much as a task's ``MITO_NEW_TASK`` file may hold."""
MAX_JSON_BODY = 16 * 1024 * 1024
"""Batches only: a batch submit, a worker's exchange, lists of task, worker or attachment names."""
MAX_DRAINED_BODY = 1024**3
"""The most of an oversized body the server reads (and drops, keeping nothing) to answer 413: a
client that sends its whole body before reading the answer would otherwise see the connection reset,
not the answer. Past this, Tornado cuts the connection with a bare 400."""

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


@dataclass(frozen=True)
class Operation:
    """What a handler method accepts and answers: the source of ``/openapi.json``."""

    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    auth: str = "user"  # "user", "worker", "admin" or "none"
    answer: str = "json"  # "json", "empty" (empty 200), "null" (JSON null), "text" (plain text), "arrow" (Arrow IPC stream)
    columns: Callable[[], pa.Schema] | None = None  # the schema of an "arrow" answer
    nullable: bool = False  # the JSON answer may be null
    query: tuple[tuple[str, str], ...] = ()  # (name, description) of query parameters
    errors: tuple[int, ...] = ()  # statuses beyond 400, 401, 403, 404 (and 413 for a body)
    max_body: int = SMALL_JSON_BODY  # bytes of JSON body the route reads (413 past it)


def operation(summary: str, request: type[BaseModel] | None = None, response: type[BaseModel] | None = None, **options: Any) -> Callable[[F], F]:
    if "query" in options:
        options["query"] = tuple(options["query"].items())
    if response is None and "answer" not in options:
        options["answer"] = "empty"

    def mark(method: F) -> F:
        method.operation = Operation(summary, request, response, **options)  # type: ignore[attr-defined]
        return method

    return mark


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise ValueError(f"{constant} is not a JSON value")


_ESCAPED_NUL_OR_SURROGATE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _unstorable_text(data: Any) -> str | None:
    """Where the body holds what no database column or command line can, though JSON can carry
    it: a NUL character or an unpaired surrogate, in a value or a key."""
    pending: list[tuple[str, Any]] = [("body", data)]
    while pending:  # iterative: the body may nest as deep as json.loads allows
        where, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{where} key", key) for key in value)
            pending.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{where}.{index}", item) for index, item in enumerate(value))
        elif isinstance(value, str):
            if "\x00" in value:
                return f"{where.removeprefix('body.')}: contains a NUL character"
            try:
                value.encode()
            except UnicodeEncodeError:
                return f"{where.removeprefix('body.')}: contains an unpaired surrogate"
    return None


@stream_request_body
class ApiHandler(RequestHandler):
    """Services come from ``self.settings["mito"]`` (built once at start).

    Bodies are streamed in and kept up to the route's ``max_body``; the rest of a larger one is
    read and dropped, and the route answers 413 before it authenticates or parses anything (the
    server's own limit would cut the connection)."""

    _chunks: list[bytes]
    _received = 0
    _limit = SMALL_JSON_BODY

    def prepare(self) -> None:
        ARRIVAL.set(Arrival(self.request.protocol, self.request.headers.get("Host")))
        if self.context.closing:  # the services are closing: a request on a kept-alive connection must not reach them
            raise ShuttingDown()
        self._chunks = []
        query = self.request.query_arguments
        if any("\x00" in value for value in self.path_kwargs.values()) or any(b"\x00" in v for values in query.values() for v in values):
            raise InvalidRequest("a path or query parameter contains a NUL character")
        declared = self._operation()
        if declared is not None:
            self._limit = declared.max_body
            # query parameters are checked like body fields: a typo is an error
            unknown = set(query) - {name for name, _ in declared.query}
            if unknown:
                raise InvalidRequest(f"unknown query parameter {sorted(unknown)[0]!r}")

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= self._limit:
            self._chunks.append(chunk)

    def _refuse_oversized(self) -> None:
        if self._received > self._limit:
            raise PayloadTooLarge(self._received, self._limit)

    @property
    def mito(self) -> Any:
        return self.settings["mito"]

    @property
    def context(self) -> Context:
        return self.mito.context

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    # --- input ----------------------------------------------------------------------------------

    def _operation(self) -> Operation | None:
        """What the handler method serving this request declares."""
        return getattr(getattr(self, (self.request.method or "").lower(), None), "operation", None)

    def body(self) -> Any:
        """The JSON body parsed into the request model the method declares."""
        declared = self._operation()
        assert declared is not None and declared.request is not None, "the handler method declares no request model"
        self._refuse_oversized()
        raw = b"".join(self._chunks)
        try:
            data = json.loads(raw or b"null", parse_constant=_not_json)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN and Infinity
            raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise InvalidRequest("the body is not valid JSON (nested too deeply)") from None
        problem = _unstorable_text(data) if _ESCAPED_NUL_OR_SURROGATE.search(raw) else None
        if problem:
            raise InvalidRequest(problem)
        try:
            return declared.request.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None

    def _bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken()
        return token

    async def user(self) -> User:
        self._refuse_oversized()
        return await self.mito.users.authenticate(self._bearer())

    async def caller(self) -> Caller:
        """The user the token names, for a service that checks the token still holds in the
        statement that acts (``services/users.py``)."""
        self._refuse_oversized()
        return await self.mito.users.caller(self._bearer())

    async def worker(self) -> WorkerIdentity:
        self._refuse_oversized()
        return await self.mito.workers.authenticate(self._bearer())

    # --- output ---------------------------------------------------------------------------------

    def send(self, model: BaseModel | None, *, null: bool = False) -> None:
        """A model as JSON; ``None`` is an empty 200 (or the JSON ``null`` where the reference sends it)."""
        if model is not None:
            self.finish(model.model_dump_json())
        else:
            self.finish("null" if null else b"")

    async def send_arrow(self, batches: AsyncIterator[pa.RecordBatch]) -> None:
        """An Arrow IPC stream of the schema the method declares, written and flushed a record
        batch at a time: the memory held is a batch's, however many rows. The first batch is
        awaited before anything is sent, so that an error until then (no such group, no role)
        still answers as JSON."""
        import pyarrow as pa  # loaded by the first such answer, not at start (see TaskService.query_columns)

        declared = self._operation()
        assert declared is not None and declared.columns is not None, "the handler method declares no Arrow schema"
        schema = declared.columns()
        async with contextlib.aclosing(batches):
            batch = await anext(batches, None)
            self.set_header("Content-Type", ARROW_STREAM)
            sink = _Chunks()
            try:
                with pa.ipc.new_stream(sink, schema) as writer:
                    while batch is not None:
                        writer.write_batch(batch)
                        self.write(sink.take())
                        await self.flush()  # waits for the socket: a slow reader slows the query, not memory
                        batch = await anext(batches, None)
                self.finish(sink.take())
            except StreamClosedError:
                pass  # the client went away: nothing to answer

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, ApiError):
            message = exc.msg
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif status_code >= 500:
            message = "Internal server error"
        else:
            message = httputil.responses.get(status_code, "Unknown error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"msg": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        # connections are not pinged before each use (a round trip per request): a dead one
        # shows up here, once, and SQLAlchemy has already renewed the pool
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            log.warning("%s %s: the database connection was lost (%s)", self.request.method, self.request.path, e.orig)
            e = DatabaseConnectionLost()
        if isinstance(e, ApiError):  # expected outcomes: no traceback in the log
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)


class _Chunks(io.RawIOBase):
    """Where an Arrow stream writer writes: bytes taken out as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)  # the writer may reuse its buffer
        self._chunks.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def query_argument(handler: RequestHandler, name: str, default: str | None = None) -> str | None:
    """A query argument as it was sent (Tornado's reader turns control characters into spaces and
    strips them: ``offset=0%02`` would read as ``0``, ``stream=stdout%02`` as ``stdout``)."""
    return handler.get_query_argument(name, default, strip=False)


def query_arguments(handler: RequestHandler, name: str) -> list[str]:
    """Every value of a repeated query argument, as sent (see ``query_argument``)."""
    return handler.get_query_arguments(name, strip=False)


_DECIMAL = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")  # longer is past every bound (and int() refuses 4,300 digits)


def number_argument(handler: RequestHandler, name: str, default: float, meaning: str, whole: bool = False) -> float:
    """A number from the query string, in plain digits (``int`` and ``float`` would also take
    spaces, underscores, signs and other scripts' digits); a 400 saying it must be ``meaning``.
    ``whole``: an integer, read exactly (a float would turn 400 nines into infinity)."""
    raw = query_argument(handler, name)
    if raw is None:
        return default
    written = _DECIMAL.fullmatch(raw)
    if written is None or (whole and written.group(1)):
        raise InvalidRequest(f"{name} must be {meaning}")
    return int(raw) if whole else float(raw)


def wait_argument(handler: RequestHandler) -> float:
    """``?wait=SECONDS`` of the long-polling routes; absent means answer at once."""
    wait = number_argument(handler, "wait", 0, "a number of seconds")
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return wait


class NotFoundHandler(ApiHandler):
    """Unknown routes answer like every other error."""

    def prepare(self) -> None:
        super().prepare()
        raise NotFound(f"Route {self.request.method} {self.request.path}")
