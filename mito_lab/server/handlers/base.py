"""The base handler: JSON in and out through the wire models, errors as ``{"msg": ...}``."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tornado import httputil
from tornado.web import HTTPError, RequestHandler

from mito_lab.server.db.models import User, Worker
from mito_lab.server.errors import ApiError, InvalidRequest, InvalidToken, NotFound
from mito_lab.server.services.context import Context

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


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

    def body(self, model: type[ModelT]) -> ModelT:
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


class NotFoundHandler(ApiHandler):
    """Unknown routes answer like every other error."""

    def prepare(self) -> None:
        raise NotFound(f"Route {self.request.method} {self.request.path}")
