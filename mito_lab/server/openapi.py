"""``/openapi.json``: the REST contract, generated from the routes and the wire models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mito_lab import __version__
from mito_lab.server.handlers.base import Operation
from mito_lab.wire import ARROW_STREAM

_GROUP = re.compile(r"\(\?P<(\w+)>([^)]*)\)")
_AUTH = {
    "user": [{"user": []}],
    "admin": [{"user": []}],
    "worker": [{"worker": []}],
    "none": [],
}


def _path(pattern: str) -> tuple[str, list[tuple[str, str]]]:
    """Tornado's ``/tasks/(?P<task_uuid>[0-9a-f-]+)`` -> ``/tasks/{task_uuid}`` and its parameters."""
    parameters = [(name, regex) for name, regex in _GROUP.findall(pattern)]
    return _GROUP.sub(lambda m: "{" + m.group(1) + "}", pattern), parameters


def _operations(handlers: list[tuple[str, type]]) -> list[tuple[str, str, Operation]]:
    found = []
    for pattern, handler in handlers:
        for method in ("get", "post", "put", "delete"):
            declared = getattr(getattr(handler, method, None), "operation", None)
            if isinstance(declared, Operation):
                found.append((pattern, method, declared))
    return found


def build(handlers: list[tuple[str, type]]) -> dict[str, Any]:
    operations = _operations(handlers)
    models: set[tuple[type[BaseModel], str]] = set()
    for _, _, op in operations:
        if op.request:
            models.add((op.request, "validation"))
        if op.response:
            models.add((op.response, "serialization"))
    refs, schemas = models_json_schema(sorted(models, key=lambda m: (m[0].__name__, m[1])), ref_template="#/components/schemas/{model}")
    error = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMsg"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for pattern, method, op in operations:
        path, parameters = _path(pattern)
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
            "security": _AUTH[op.auth],
            "parameters": [
                {"name": name, "in": "path", "required": True,
                 "schema": {"type": "string", **({"format": "uuid"} if "a-f" in regex else {})}}
                for name, regex in parameters
            ] + [
                {"name": name, "in": "query", "required": False, "description": description, "schema": {"type": "string"}}
                for name, description in op.query
            ],
            "responses": {str(status): error for status in (400, 401, 403, 404, 503, *op.errors)},
        }
        if op.request:
            schema = refs[(op.request, "validation")]
            entry["requestBody"] = {
                "required": True, "description": f"JSON, at most {op.max_body:,} bytes",
                "content": {"application/json": {"schema": schema}},
            }
            entry["responses"]["413"] = {**error, "description": f"The body is over {op.max_body:,} bytes"}
        if op.answer == "json" and op.response:
            schema = refs[(op.response, "serialization")]
            if op.nullable:
                schema = {"anyOf": [schema, {"type": "null"}]}
            entry["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": schema}}}
        elif op.answer == "null":
            entry["responses"]["200"] = {"description": "OK", "content": {"application/json": {"schema": {"type": "null"}}}}
        elif op.answer == "arrow" and op.columns:
            columns = ", ".join(f"{field.name} ({field.type})" for field in op.columns())
            entry["responses"]["200"] = {
                "description": f"OK: an Arrow IPC stream of record batches with the columns {columns}",
                "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            }
        elif op.answer == "text":
            entry["responses"]["200"] = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            entry["responses"]["200"] = {"description": "OK (empty body)"}
        paths.setdefault(path, {})[method] = entry
    components = schemas.get("$defs", {})
    components["ErrorMsg"] = {"type": "object", "properties": {"msg": {"type": "string"}}, "required": ["msg"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mito_lab coordinator", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "user": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA), from POST /login"},
                "worker": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA), from POST /workers"},
            },
        },
    }
