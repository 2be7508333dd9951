"""The dashboard as static HTML: what a saved notebook shows where no kernel runs the live panel
(the widget's fallback in its display bundle, and what replaces it once it is closed)."""

from __future__ import annotations

import html
import time
from typing import Any

from mito_lab.client.views import FAILED_COLOR, STATE_COLORS, UNKNOWN_COLOR
from mito_lab.text import readable_duration, size_text
from mito_lab.wire import TaskState

PROGRESS_COLORS = {"done": STATE_COLORS[TaskState.Finished], "failed": FAILED_COLOR, "running": STATE_COLORS[TaskState.Running],
                   "waiting": "#90a4ae"}
_CELL = "text-align:left;padding:1px 8px 1px 0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis"


def _color(state: str, exit_status: int | None) -> str:
    if exit_status not in (None, 0):
        return FAILED_COLOR
    return next((color for known, color in STATE_COLORS.items() if known.value == state), UNKNOWN_COLOR)


def progress_line(summary: dict[str, Any]) -> str:
    """The progress bar's parts as text: ``12/40 · 10 done · 2 failed · 3 running · 25 waiting``."""
    parts = summary["progress"]
    ended = parts["done"] + parts["failed"]
    return f"{ended}/{summary['total']} · " + " · ".join(f"{parts[name]} {name}" for name in ("done", "failed", "running", "waiting"))


def _progress_bar(summary: dict[str, Any]) -> str:
    total = max(1, summary["total"])
    segments = "".join(
        f'<div title="{number} {name}" style="width:{100 * number / total:.3f}%;background:{PROGRESS_COLORS[name]}"></div>'
        for name, number in summary["progress"].items() if number
    )
    return (f'<div style="display:flex;height:12px;width:100%;max-width:720px;background:#eceff1;border-radius:3px;overflow:hidden">'
            f'{segments}</div><div style="font-size:90%">{html.escape(progress_line(summary))}</div>')


def _counts(summary: dict[str, Any]) -> str:
    return " ".join(
        f'<span style="color:{color};font-weight:bold;margin-right:1em">{state.value} {summary["counts"].get(state.value, 0)}</span>'
        for state, color in STATE_COLORS.items()
    )


def _duration(row: dict[str, Any], now: float) -> str:
    return "" if row["started"] is None else readable_duration((row["ended"] or now) - row["started"])


def _task_rows(rows: list[dict[str, Any]], now: float) -> str:
    head = "".join(f'<th style="{_CELL}">{name}</th>' for name in ("#", "state", "uuid", "command", "labels", "duration", "cpu", "peak mem"))
    body = []
    for row in rows:
        state = row["state"] + (f" ({row['exit']})" if row["exit"] not in (None, 0) else "") + (f" · {row['msg']}" if row["msg"] else "")
        badge = (f'<span style="background:{_color(row["state"], row["exit"])};color:white;border-radius:3px;padding:0 6px">'
                 f'{html.escape(state)}</span>')
        cells = (str(row["id"]), badge, f'<code>{row["uuid"][:8]}</code>',
                 f'<code title="{html.escape(row["command"])}">{html.escape(row["command"][:80])}</code>',
                 html.escape(row["labels"]), _duration(row, now), "" if row["cpu"] is None else f'{row["cpu"]:.1f} s',
                 "" if row["rss"] is None else size_text(row["rss"]))
        body.append("<tr>" + "".join(f'<td style="{_CELL};max-width:28em">{cell}</td>' for cell in cells) + "</tr>")
    return f'<table style="border-collapse:collapse;font-size:90%"><tr>{head}</tr>{"".join(body)}</table>'


def _worker_rows(workers: list[dict[str, Any]], now: float) -> str:
    if not workers:
        return "<i>no workers serve this group</i>"
    lines = [
        f'<code>{w["id"][:8]}</code> {html.escape(w["state"])} · heartbeat {max(0, int(now - w["heartbeat"]))} s ago · '
        + (f'task <code>{w["task"][:8]}</code>' if w["task"] else "<i>idle</i>")
        for w in workers
    ]
    return "<br>".join(lines)


# A snapshot output stands before its live panel's output. Where the panel is drawn, the snapshot
# gives way; where it cannot be (a kernel that did not draw it, or none), JupyterLab's placeholder
# in the next output ("Loading widget...", "model not found") is hidden and the snapshot shows.
# Plain CSS, so it works in a saved notebook with no kernel at all.
SNAPSHOT_STYLE = (
    "<style>"
    ".jp-OutputArea-child:has(.mito-snapshot) + .jp-OutputArea-child > .jp-OutputArea-output:not(:has(.mito-dash)) {display:none}"
    ".jp-OutputArea-child:has(.mito-snapshot):has(+ .jp-OutputArea-child .mito-dash) {display:none}"
    "</style>"
)


def snapshot_html(board: dict[str, Any]) -> str:
    """``board``: group, coordinator, summary, newest (rows as dicts), workers, log, live."""
    now = time.time()
    summary = board["summary"]
    state = "live" if board["live"] else "stopped"
    shown = "" if summary["shown"] >= summary["total"] else f" (the newest {summary['shown']} of {summary['total']} listed)"
    log = board["log"]
    log_part = (f'<div><b>{html.escape(log["stream"])}</b> of <code>{html.escape(log["uuid"])}</code></div>'
                f'<pre style="background:#1e1e1e;color:#e6e6e6;max-height:12em;overflow:auto;padding:4px">'
                f'{html.escape(log["text"][-4000:])}</pre>') if log["uuid"] else ""
    return (
        '<div class="mito-snapshot mito-dash-snapshot" style="font-family:sans-serif;font-size:13px">'
        f'<div><b>mito dashboard</b> · group <b>{html.escape(board["group"])}</b> · {html.escape(board["coordinator"])}'
        f' · <i>snapshot of {time.strftime("%Y-%m-%d %H:%M:%S")}, {state}</i></div>'
        f'{_progress_bar(summary)}<div style="margin:4px 0">{_counts(summary)}</div>'
        f'{_task_rows(board["newest"], now)}<div style="font-size:90%;color:#607d8b">{summary["total"]} tasks{shown}</div>'
        f'<div style="margin-top:4px"><b>Workers</b><br>{_worker_rows(board["workers"], now)}</div>{log_part}</div>'
    )
