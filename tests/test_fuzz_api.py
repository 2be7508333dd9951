"""Schemathesis against the coordinator's own ``/openapi.json``: generated requests, valid and
invalid, to every operation, with random path parameters and with ones naming real resources, as
the system administrator and (on the workers' routes) as a worker. No answer may be a 5xx, every
answer must be a status documented for its operation, with the documented content type and a body
matching the documented schema, and the coordinator must log no traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Platform, http

OCTETS = {"Content-Type": "application/octet-stream"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 8  # per operation, mode and kind of path parameters: ~2,000 requests per database


@dataclass
class World:
    """Real resources for the path parameters, and the tokens to call with."""

    parameters: dict[str, str]
    user_token: str
    worker_token: str


def make_world(platform: Platform) -> World:
    group = "mitosis_admin"  # the system administrator's own group
    task = platform.api("POST", "/tasks", {"group_name": group, "task_spec": {"args": ["true"]}}).json["uuid"]
    upload = platform.api("POST", f"/tasks/{task}/artifacts", {"content_type": "result", "content_length": 2}).json
    assert http("PUT", upload["url"], raw=b"ok", headers=OCTETS).status == 200
    upload = platform.api("POST", f"/groups/{group}/attachments", {"key": "data.txt", "content_length": 2}).json
    assert http("PUT", upload["url"], raw=b"ok", headers=OCTETS).status == 200
    worker = platform.api("POST", "/workers", {"groups": [f"{group}:Admin"]}).json
    platform.add_user("target")  # what the routes taking a username may lock, delete or change
    alert = platform.api("POST", "/alerts", {"label": "fuzzed", "url": "http://127.0.0.1:9/hook", "secret": "a-webhook-secret-to-fuzz"}).json
    parameters = {"group": group, "task_uuid": task, "worker_uuid": worker["worker_id"], "key": "data.txt",
                  "kind": "result", "username": "target", "state": "ExecSpawned", "alert_id": str(alert["id"])}
    return World(parameters, platform.token(), worker["token"])


def destructive_last(operation: Any) -> tuple[bool, bool]:
    """Deleting the worker (or the caller's own worker registration) ends what follows it."""
    return operation.method.upper() == "DELETE", operation.path == "/workers"


def fuzz(operation: Any, mode: GenerationMode, path_parameters: dict[str, str], token: str, failures: list[str]) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
    def run(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        if mode is GenerationMode.NEGATIVE and response.status_code == 405:
            return  # an invalid value that spells a sibling route's own segment (DELETE /tasks/submit) reached that route
        try:
            case.validate_response(response, checks=checks)
        except BaseException as failure:  # schemathesis raises a group of every failed check
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}):\n{failure}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Only a negative run may find nothing to make: an operation without a body whose
        # parameters take any text. A valid request can always be made, and a body made invalid.
        if mode is GenerationMode.POSITIVE or "requestBody" in operation.definition.raw:
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): no request could be generated")


@pytest.mark.timeout(600)  # ~2,000 requests, beside the rest of the suite on two cores
def test_generated_requests_get_documented_answers(platform: Platform) -> None:
    world = make_world(platform)
    schema = schemathesis.openapi.from_url(f"{platform.url}/openapi.json")
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=destructive_last)
    assert len(operations) > 60
    failures: list[str] = []
    for operation in operations:
        token = world.worker_token if {"worker": []} in operation.definition.raw["security"] else world.user_token
        names = [parameter.name for parameter in operation.path_parameters]
        real = {name: world.parameters[name] for name in names}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, {}, token, failures)
            if real:
                fuzz(operation, mode, real, token, failures)
    assert not failures, "\n\n".join(failures[:10])
    assert http("GET", f"{platform.url}/auth", token=world.user_token).status == 200  # the caller was never locked out
    assert "Traceback" not in platform.log, platform.log[-5000:]

