"""Text for people: what each client command returns, as the CLI prints it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from mito_lab.client.views import alert_condition, alert_text, usage_text, why_text
from mito_lab.text import counted, size_text
from mito_lab.wire import (
    AlertInfo,
    AlertsResp,
    AttachmentMetadata,
    AttachmentsQueryResp,
    DownloadResp,
    GroupQueryInfo,
    SubmitTaskResp,
    TaskInfo,
    TaskQueryResp,
    TasksQueryResp,
    TaskWhyResp,
    WorkerQueryResp,
    WorkersQueryResp,
)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _outcome(info: TaskInfo) -> str:
    if info.result is None:
        return ""
    return str(info.result.exit_status) + (f" ({info.result.msg.value})" if info.result.msg else "") + (" (cache hit)" if info.cached_from else "")


def _task(response: TaskQueryResp) -> str:
    info = response.info
    lines = [
        f"Task {info.uuid}",
        f"  group:      {info.group_name} (#{info.task_id}), created by {info.creator_username}",
        f"  state:      {info.state.value}",
        f"  command:    {' '.join(info.spec.args)}",
        f"  tags:       {', '.join(info.tags)}",
        f"  labels:     {', '.join(info.labels)}",
        f"  priority:   {info.priority}, timeout {info.timeout}s",
        f"  created:    {info.created_at.isoformat()}",
        f"  updated:    {info.updated_at.isoformat()}",
    ]
    if info.result is not None:
        lines.append(f"  result:     exit status {_outcome(info)}")
    if info.cached_from is not None:
        lines.append(f"  cached:     a cache hit of {info.cached_from} (no worker ran it; its artifacts are that run's)")
    if info.usage is not None:
        lines.append(f"  cost:       {usage_text(info.usage)}")
    if info.reporter_uuid:
        lines.append(f"  worker:     {info.reporter_uuid}")
    for link in ("upstream_task_uuid", "downstream_task_uuid"):
        if getattr(info, link):
            lines.append(f"  {link.split('_')[0] + ':':<11} {getattr(info, link)}")
    if response.artifacts:
        lines.append("  artifacts:  " + ", ".join(f"{a.content_type.value} ({size_text(a.size)})" for a in response.artifacts))
    return "\n".join(lines)


def _tasks(response: TasksQueryResp, verbose: bool) -> str:
    if not response.tasks:
        return counted(response.count, "task") if response.count else f"No tasks in group {response.group_name}"
    headers = ["UUID", "STATE", "EXIT", "LABELS", "CREATED"]
    rows = [[t.uuid, t.state.value, _outcome(t), ",".join(t.labels), t.created_at.strftime("%Y-%m-%d %H:%M:%S")] for t in response.tasks]
    if verbose:
        headers += ["#", "CREATOR", "TAGS", "PRIO", "COMMAND"]
        for row, t in zip(rows, response.tasks, strict=True):
            row += [t.task_id, t.creator_username, ",".join(t.tags), t.priority, " ".join(t.spec.args)]
    return table(headers, rows)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _worker(response: WorkerQueryResp) -> str:
    info = response.info
    return "\n".join([
        f"Worker {info.worker_id}",
        f"  created by: {info.creator_username}, {info.created_at.isoformat()}",
        f"  state:      {info.state.value}",
        f"  tags:       {', '.join(info.tags)}",
        f"  labels:     {', '.join(info.labels)}",
        f"  heartbeat:  {info.last_heartbeat.isoformat()}",
        f"  task:       {info.assigned_task_id or '(idle)'}",
        "  groups:     " + ", ".join(f"{name} ({role.value})" for name, role in response.groups.items()),
    ])


def _workers(response: WorkersQueryResp, verbose: bool) -> str:
    if not response.workers:
        return counted(response.count, "worker") if response.count else f"No workers in group {response.group_name}"
    headers = ["WORKER", "STATE", "TAGS", "LABELS", "HEARTBEAT", "TASK"]
    rows = [[w.worker_id, w.state.value, ",".join(w.tags), ",".join(w.labels), _when(w.last_heartbeat), w.assigned_task_id or ""]
            for w in response.workers]
    if verbose:
        headers.append("CREATOR")
        for row, w in zip(rows, response.workers, strict=True):
            row.append(w.creator_username)
    return table(headers, rows)


def _group(info: GroupQueryInfo) -> str:
    lines = [
        f"Group {info.group_name}",
        f"  created by: {info.creator_username}, {info.created_at.isoformat()}",
        f"  state:      {info.state.value}",
        f"  tasks:      {info.task_count}, workers: {info.worker_count}",
        f"  storage:    {size_text(info.storage_used)} of {size_text(info.storage_quota)}",
    ]
    if info.users_in_group is not None:
        lines.append("  members:    " + ", ".join(f"{name} ({role.value})" for name, role in info.users_in_group.items()))
    return "\n".join(lines)


def _attachments(response: AttachmentsQueryResp) -> str:
    if not response.attachments:
        return counted(response.count, "attachment") if response.count else f"No attachments in group {response.group_name}"
    return table(["KEY", "SIZE", "UPDATED"], [[a.key, a.size, _when(a.updated_at)] for a in response.attachments])


def _alerts(response: AlertsResp) -> str:
    if not response.alerts:
        return f"No alerts in group {response.group_name}"
    rows = [[a.id, a.label, alert_condition(a), a.url, a.secret_hint, a.creator_username, "yes" if a.active else "no",
             f"{a.last_event.value} {_when(a.fired_at)}" if a.last_event else "", a.delivery or ""] for a in response.alerts]
    return table(["ID", "LABEL", "ON", "URL", "SECRET", "CREATOR", "ACTIVE", "FIRED", "DELIVERY"], rows)


def as_json(result: Any) -> str | None:
    """Machine-readable output (``--json``): the API's own JSON."""
    if result is None:
        return None
    if isinstance(result, BaseModel):
        return result.model_dump_json(indent=2)
    return json.dumps(result, indent=2, default=str)


def render(result: Any, verbose: bool = False) -> str | None:
    if result is None:
        return None
    if isinstance(result, str):
        return result
    if isinstance(result, dict):  # your groups and roles
        return table(["GROUP", "ROLE"], [[name, role.value] for name, role in result.items()])
    if isinstance(result, WorkerQueryResp):
        return _worker(result)
    if isinstance(result, WorkersQueryResp):
        return _workers(result, verbose)
    if isinstance(result, GroupQueryInfo):
        return _group(result)
    if isinstance(result, AttachmentsQueryResp):
        return _attachments(result)
    if isinstance(result, AttachmentMetadata):
        return f"size {size_text(result.size)}, updated {result.updated_at.isoformat()}, created {result.created_at.isoformat()}"
    if isinstance(result, SubmitTaskResp):
        hit = f": a cache hit, Finished with the artifacts of {result.cached_from}" if result.cached_from else ""
        return f"Submitted task {result.uuid} (#{result.task_id}){hit}"
    if isinstance(result, TaskWhyResp):
        return why_text(result)
    if isinstance(result, AlertInfo):
        return alert_text(result)
    if isinstance(result, AlertsResp):
        return _alerts(result)
    if isinstance(result, TaskQueryResp):
        return _task(result)
    if isinstance(result, TasksQueryResp):
        return _tasks(result, verbose)
    if isinstance(result, DownloadResp):
        return f"{result.url}\n({size_text(result.size)})"
    return str(result)
