"""The base handler: JSON in and out through the wire models, errors as ``{"msg": ...}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tornado import httputil
from tornado.web import HTTPError, RequestHandler

from mito_lab.server.db.models import User, Worker
from mito_lab.server.errors import ApiError, InvalidRequest, InvalidToken, NotFound
from mito_lab.server.services.context import Context
from mito_lab.wire import MAX_WAIT_SECONDS

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


@dataclass(frozen=True)
class Operation:
    """What a handler method accepts and answers: the source of ``/openapi.json``."""

    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    auth: str = "user"  # "user", "worker", "admin" or "none"
    answer: str = "json"  # "json", "empty" (empty 200), "null" (JSON null), "text" (plain text)
    nullable: bool = False  # the JSON answer may be null
    query: tuple[tuple[str, str], ...] = ()  # (name, description) of query parameters


def operation(summary: str, request: type[BaseModel] | None = None, response: type[BaseModel] | None = None, **options: Any) -> Callable[[F], F]:
    if "query" in options:
        options["query"] = tuple(options["query"].items())
    if response is None and "answer" not in options:
        options["answer"] = "empty"

    def mark(method: F) -> F:
        method.operation = Operation(summary, request, response, **options)  # type: ignore[attr-defined]
        return method

    return mark


def describe_validation_error(error: ValidationError) -> str:
    """One readable line: ``field.path: problem; other: problem``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class ApiHandler(RequestHandler):
    """Services come from ``self.settings["mito"]`` (built once at start)."""

    @property
    def mito(self) -> Any:
        return self.settings["mito"]

    @property
    def context(self) -> Context:
        return self.mito.context

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    # --- input ----------------------------------------------------------------------------------

    def body(self, model: type[ModelT] | None = None) -> Any:
        """The JSON body parsed into ``model``, by default the request model the method declares."""
        if model is None:
            declared = getattr(getattr(self, (self.request.method or "").lower()), "operation", None)
            model = declared.request if declared else None
            assert model is not None, "the handler method declares no request model"
        try:
            data = json.loads(self.request.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None

    def _bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken()
        return token

    async def user(self) -> User:
        return await self.mito.users.authenticate(self._bearer())

    async def worker(self) -> Worker:
        return await self.mito.workers.authenticate(self._bearer())

    # --- output ---------------------------------------------------------------------------------

    def send(self, model: BaseModel | None, *, null: bool = False) -> None:
        """A model as JSON; ``None`` is an empty 200 (or the JSON ``null`` where the reference sends it)."""
        if model is not None:
            self.finish(model.model_dump_json())
        else:
            self.finish("null" if null else b"")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, ApiError):
            message = exc.msg
        elif status_code >= 500:
            message = "Internal server error"
        else:
            message = httputil.responses.get(status_code, "Unknown error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"msg": message}))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ApiError):  # expected outcomes: no traceback in the log
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)


def wait_argument(handler: RequestHandler) -> float:
    """``?wait=SECONDS`` of the long-polling routes; absent means answer at once."""
    try:
        wait = float(handler.get_query_argument("wait", "0"))
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return wait


class NotFoundHandler(ApiHandler):
    """Unknown routes answer like every other error."""

    def prepare(self) -> None:
        raise NotFound(f"Route {self.request.method} {self.request.path}")
