"""Text for people: what each client command returns, as the CLI prints it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mito_lab.wire import (
    DownloadResp,
    SubmitTaskResp,
    TaskInfo,
    TaskQueryResp,
    TasksQueryResp,
)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _outcome(info: TaskInfo) -> str:
    if info.result is None:
        return ""
    return str(info.result.exit_status) + (f" ({info.result.msg.value})" if info.result.msg else "")


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
    if info.reporter_uuid:
        lines.append(f"  worker:     {info.reporter_uuid}")
    for link in ("upstream_task_uuid", "downstream_task_uuid"):
        if getattr(info, link):
            lines.append(f"  {link.split('_')[0] + ':':<11} {getattr(info, link)}")
    if response.artifacts:
        lines.append("  artifacts:  " + ", ".join(f"{a.content_type.value} ({a.size} B)" for a in response.artifacts))
    return "\n".join(lines)


def _tasks(response: TasksQueryResp, verbose: bool) -> str:
    if not response.tasks:
        return f"{response.count} tasks" if response.count else f"No tasks in group {response.group_name}"
    headers = ["UUID", "STATE", "EXIT", "LABELS", "CREATED"]
    rows = [[t.uuid, t.state.value, _outcome(t), ",".join(t.labels), t.created_at.strftime("%Y-%m-%d %H:%M:%S")] for t in response.tasks]
    if verbose:
        headers += ["#", "CREATOR", "TAGS", "PRIO", "COMMAND"]
        for row, t in zip(rows, response.tasks):
            row += [t.task_id, t.creator_username, ",".join(t.tags), t.priority, " ".join(t.spec.args)]
    return table(headers, rows)


def render(result: Any, verbose: bool = False) -> str | None:
    if result is None:
        return None
    if isinstance(result, str):
        return result
    if isinstance(result, SubmitTaskResp):
        return f"Submitted task {result.uuid} (#{result.task_id})"
    if isinstance(result, TaskQueryResp):
        return _task(result)
    if isinstance(result, TasksQueryResp):
        return _tasks(result, verbose)
    if isinstance(result, DownloadResp):
        return f"{result.url}\n({result.size} bytes)"
    return str(result)
