"""HTML for tasks and workers, shared by task handles and the dashboard, and the merge of a task
event into what a view already knows about the task."""

from __future__ import annotations

import html
import shlex
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any, ClassVar

from mito_lab.text import readable_duration, size_text
from mito_lab.wire import AlertInfo, TaskInfo, TaskResultMessage, TaskResultSpec, TaskState, TaskUsage, TaskWhyResp

STATE_COLORS = {
    TaskState.Pending: "#9e9e9e",
    TaskState.Ready: "#1e88e5",
    TaskState.Running: "#fb8c00",
    TaskState.Finished: "#43a047",
    TaskState.Cancelled: "#e53935",
}  # the states a dashboard counts and filters by (not the wire's catch-all Unknown)
UNKNOWN_COLOR = "#616161"
FAILED_COLOR = "#c62828"
# the classes MathJax skips (v3, and v2's name): JupyterLab typesets HTML outputs, so `$HOME ... $X` became maths
NO_MATHS = "mathjax_ignore tex2jax_ignore"


def updated_info(info: TaskInfo, event: dict[str, Any]) -> TaskInfo:
    """``info`` with the changes a task event carries (see ``server/services/activity.py``)."""
    changes: dict[str, Any] = {
        "state": TaskState(event["state"]),
        "exec_state": event.get("exec_state"),
        "attempts": event.get("attempts", info.attempts),
        "cancel_requested": event.get("cancel_requested", info.cancel_requested),
        "started_at": event.get("started_at"),  # ISO text: validated below like any answer
        "ended_at": event.get("ended_at"),
    }
    if event.get("archived") and event.get("exit_status") is not None:
        message = event.get("msg")
        changes["result"] = TaskResultSpec(exit_status=event["exit_status"], msg=TaskResultMessage(message) if message else None)
    if event.get("worker"):
        changes["reporter_uuid"] = event["worker"]
    return TaskInfo.model_validate({**info.model_dump(), **changes})


def failed(info: TaskInfo) -> bool:
    return info.result is not None and (info.result.exit_status != 0 or info.state == TaskState.Cancelled)


def state_badge(info: TaskInfo) -> str:
    """The state as a colored label; a finished task that exited non-zero shows its exit code in red."""
    color = STATE_COLORS.get(info.state, UNKNOWN_COLOR)
    text = info.state.value
    if info.result is not None:
        if info.result.exit_status != 0:
            text += f" ({info.result.exit_status})"
            color = FAILED_COLOR
        if info.result.msg is not None:
            text += f" · {info.result.msg.value}"
    elif info.exec_state is not None and info.state == TaskState.Running:
        text += f" · {info.exec_state.value}"
    return (f'<span style="background:{color};color:white;border-radius:3px;padding:1px 6px;'
            f'white-space:nowrap">{html.escape(text)}</span>')


def run_seconds(info: TaskInfo, now: datetime | None = None) -> float | None:
    """How long the task has run (until now, if it still runs); ``None`` before it started."""
    if info.started_at is None:
        return None
    end = info.ended_at or now or datetime.now(timezone.utc)
    return (end - info.started_at).total_seconds()


def duration_text(info: TaskInfo, now: datetime | None = None) -> str:
    seconds = run_seconds(info, now)
    return "" if seconds is None else readable_duration(seconds)


def task_text(info: TaskInfo) -> str:
    """The card in one line (a notebook's ``text/plain``, a terminal's repr)."""
    outcome = info.state.value
    if info.result is not None and info.result.exit_status != 0:
        outcome += f" (exit {info.result.exit_status})"
    command = shlex.join(info.spec.args).replace("\n", " ")
    parts = [f"Task {info.uuid}", outcome, duration_text(info), command if len(command) <= 80 else command[:79] + "…"]
    return " · ".join(part for part in parts if part)


def task_html(info: TaskInfo) -> str:
    """A task handle's card: what runs (with its line breaks), where, and how it went. Marked for
    MathJax to leave alone: JupyterLab typesets HTML outputs, and commands are full of ``$``."""
    rows = [
        ("state", state_badge(info)),
        ("command", f'<pre style="white-space:pre-wrap;margin:0;text-align:left">{html.escape(shlex.join(info.spec.args))}</pre>'),
        ("group", html.escape(f"{info.group_name} (#{info.task_id})")),
    ]
    if info.labels:
        rows.append(("labels", html.escape(", ".join(info.labels))))
    if info.started_at is not None:
        rows.append(("run time", duration_text(info)))
    if info.cached_from is not None:
        rows.append(("cached from", f"<code>{info.cached_from}</code> (no worker ran it)"))
    if info.attempts > 1:
        rows.append(("attempts", f"{info.attempts} of {info.max_attempts}"))
    cells = "".join(f'<tr><th style="text-align:left;padding-right:1em;vertical-align:top">{name}</th><td style="text-align:left">{value}</td></tr>'
                    for name, value in rows)
    return f'<div class="mito-task {NO_MATHS}"><b>Task</b> <code>{info.uuid}</code><table>{cells}</table></div>'


def task_bundle(info: TaskInfo) -> dict[str, str]:
    """The card as a display's MIME bundle."""
    return {"text/plain": task_text(info), "text/html": task_html(info)}


def why_text(answer: TaskWhyResp) -> str:
    """``explain``'s answer for people: the summary, what the task waits for, and each worker."""
    lines = [f"Task {answer.uuid} ({answer.state.value}): {answer.summary}"]
    for dependency in answer.waiting_for:
        state = dependency.state.value if dependency.state else "not visible to you"
        wanted = f", waiting for {dependency.wanted.value}" if dependency.wanted else ""
        lines.append(f"  {dependency.kind} task {dependency.uuid}: {state}{wanted}")
    if answer.workers:
        lines.append(f"  workers of its group ({len(answer.workers)}):")
        lines += [f"    {verdict.worker_id} ({verdict.creator_username}): {verdict.fit.value}, {verdict.reason}" for verdict in answer.workers]
    return "\n".join(lines)


class ShownAsText:
    """An answer shown as the CLI prints it: by ``print``, IPython, and a notebook (preformatted).
    ``as_text`` is the function that writes it."""

    as_text: ClassVar[Callable[[Any], str]]

    def __str__(self) -> str:
        return type(self).as_text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


class Explanation(ShownAsText, TaskWhyResp):
    """``explain``'s answer, shown as ``mito client why`` prints it."""

    as_text = why_text


def usage_text(usage: TaskUsage) -> str:
    """``2.41 s CPU in 1.20 s (100% of 2 cores), peak memory 312.4 MB``."""
    efficiency = usage.cpu_efficiency
    share = f" ({efficiency:.0%} of {usage.cores:g} core{'' if usage.cores == 1 else 's'})" if efficiency is not None else ""
    gpu = f", peak GPU memory {size_text(usage.gpu_max_memory)}" if usage.gpu_max_memory is not None else ""
    return f"{usage.cpu_s:.2f} s CPU in {usage.wall_s:.2f} s{share}, peak memory {size_text(usage.max_rss)}{gpu}"


def alert_condition(info: AlertInfo) -> str:
    """``done, failures >= 3`` / ``failures >= 20% of the runs``: when the alert fires."""
    events = []
    for event in info.on:
        if event.value == "failures":
            events.append(f"failures >= {info.failures}" if info.failures is not None else f"failures >= {info.failure_share:.0%} of the runs")
        else:
            events.append(event.value)
    return ", ".join(events)


def alert_text(info: AlertInfo) -> str:
    """An alert in one line, and what became of its last delivery."""
    state = "" if info.active else " (inactive: its creator no longer has Write in the group)"
    text = (f"Alert {info.id} on label {info.label} in group {info.group_name}: {alert_condition(info)} -> {info.url} "
            f"(secret {info.secret_hint}){state}")
    if info.fired_at is not None and info.last_event is not None:
        text += f"\n  fired {info.last_event.value} at {info.fired_at.isoformat()}; {info.delivery or ''}".rstrip("; ")
    return text


class AlertView(ShownAsText, AlertInfo):
    """A campaign alert (``client.alert``), shown as the CLI prints it."""

    as_text = alert_text
