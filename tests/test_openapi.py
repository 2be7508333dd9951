"""The published contract covers every route and is generated from the wire models."""

from __future__ import annotations

import json
import re

from conftest import Platform, http
from mito_lab.server.app import Coordinator


def refs(node: object) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value)
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def test_every_route_is_documented_and_every_reference_resolves(platform: Platform) -> None:
    answer = http("GET", f"{platform.url}/openapi.json")
    assert answer.status == 200
    document = json.loads(answer.body)
    assert document["openapi"].startswith("3.1")
    documented = {(path, method) for path, methods in document["paths"].items() for method in methods}
    for pattern, handler in Coordinator.routes():
        if pattern.startswith("/blobs/") or pattern in ("/openapi.json", "/events"):
            continue  # signed object URLs, the document itself and the WebSocket
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
        for method in ("get", "post", "put", "delete"):
            if method in vars(handler):
                assert (path, method) in documented, f"{method.upper()} {path} is missing from /openapi.json"
    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.split("/")[-1] in schemas, ref
    submit = document["paths"]["/tasks"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SubmitTaskReq"}
    assert "task_spec" in schemas["SubmitTaskReq"]["required"]
    fetch = document["paths"]["/workers/tasks"]["get"]
    assert fetch["security"] == [{"worker": []}] and fetch["parameters"][0]["name"] == "wait"
