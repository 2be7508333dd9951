"""pandas DataFrames of listings, with typed columns: tz-aware UTC datetimes, an ordered
categorical for task states, nullable integers for exit codes, timedeltas for timeouts and
durations, and Python lists for tags and labels. They display readably (``ReadableFrame``)."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from mito_lab.text import readable_duration
from mito_lab.wire import (
    AlertInfo,
    AlertsResp,
    AttachmentQueryInfo,
    AttachmentsQueryResp,
    Role,
    TaskExecState,
    TaskInfo,
    TasksQueryResp,
    TaskState,
    WorkerInfo,
    WorkersQueryResp,
    WorkerState,
    task_columns_schema,
)

TASK_STATES = pd.CategoricalDtype([s.value for s in TaskState], ordered=True)
EXEC_STATES = pd.CategoricalDtype([s.value for s in TaskExecState], ordered=False)
WORKER_STATES = pd.CategoricalDtype([s.value for s in WorkerState], ordered=False)
ROLES = pd.CategoricalDtype([r.value for r in Role], ordered=True)

# what a researcher looks at first, then the rest of the columnar listing's columns in its order
LEADING_TASK_COLUMNS = ["uuid", "state", "exit_status", "command", "labels", "duration", "created_at"]
TASK_COLUMNS = LEADING_TASK_COLUMNS + [name for name in task_columns_schema().names if name not in LEADING_TASK_COLUMNS]
WORKER_COLUMNS = ["worker_id", "state", "tags", "labels", "creator", "last_heartbeat", "task", "created_at", "updated_at"]
ATTACHMENT_COLUMNS = ["key", "size", "created_at", "updated_at"]
ALERT_COLUMNS = ["id", "label", "on", "failures", "failure_share", "url", "secret_hint", "active", "fired_at", "last_event", "delivery",
                 "group", "creator", "created_at"]
# Arrow types read into pandas' nullable types (then cast to the reference's dtypes)
_PANDAS_TYPES = {pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype()}


MISSING = "—"  # the one marker of a missing value, whatever the column's type
# a row on one line (long cells are cut by display.max_colwidth): wrapped uuids and labels made rows tall
ONE_LINE_ROWS = "<style>.mito-frame td, .mito-frame th { white-space: nowrap; }</style>"


def _readable_duration_cell(value: Any) -> str:
    return MISSING if value is pd.NaT else readable_duration(value.total_seconds())


def _holds_pandas_na(dtype: Any) -> bool:
    """A nullable column type (``Int64``, ``string``...): pandas shows its missing values as
    ``<NA>`` whatever ``na_rep`` says."""
    return isinstance(dtype, pd.api.extensions.ExtensionDtype) and not isinstance(dtype, pd.CategoricalDtype | pd.DatetimeTZDtype)


class ReadableFrame(pd.DataFrame):
    """A DataFrame that displays readably while its data stays as it is (timedeltas compute as
    timedeltas): durations as ``1.2 s`` / ``3 min 4 s``, ``MISSING`` for every missing value, and
    no maths in a notebook (JupyterLab typesets HTML outputs: two ``$`` in commands made a formula).
    Rows and columns are cut as pandas' own display cuts them. What is taken from it (a selection,
    a copy, a sort) displays the same way."""

    @property
    def _constructor(self) -> Callable[..., ReadableFrame]:
        return ReadableFrame

    def _shown(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """A plain frame to show (nullable columns with missing values as objects, whose missing
        values ``na_rep`` reaches), and the display options of pandas' own repr."""
        shown = pd.DataFrame(self, copy=False)
        for position, dtype in enumerate(self.dtypes):
            column = self.iloc[:, position]
            if _holds_pandas_na(dtype) and column.hasnans:
                shown.isetitem(position, column.astype(object).where(column.notna(), float("nan")))
        options = {
            "na_rep": MISSING,
            "formatters": [_readable_duration_cell if pd.api.types.is_timedelta64_dtype(dtype) else None for dtype in self.dtypes],
            "max_cols": pd.get_option("display.max_columns"),
            "show_dimensions": pd.get_option("display.show_dimensions"),
        }
        return shown, options

    def _repr_html_(self) -> str | None:
        if not pd.get_option("display.notebook_repr_html"):
            return None
        shown, options = self._shown()
        rows = pd.get_option("display.max_rows")
        if rows is not None and len(self) > rows:  # pandas shows min_rows rows of a longer frame
            rows = pd.get_option("display.min_rows") or rows
        with pd.option_context("display.html.use_mathjax", False):
            return ONE_LINE_ROWS + shown.to_html(notebook=True, max_rows=rows, classes="mito-frame", **options)

    def __repr__(self) -> str:
        shown, options = self._shown()
        return shown.to_string(
            max_rows=pd.get_option("display.max_rows"), min_rows=pd.get_option("display.min_rows"),
            max_colwidth=pd.get_option("display.max_colwidth"), line_width=pd.get_option("display.width"), **options,
        )


def _utc(values: Iterable[datetime | None]) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True), dtype="datetime64[us, UTC]")


def _text(values: Iterable[Any]) -> pd.Series:
    return pd.Series([None if v is None else str(v) for v in values], dtype="string")


def _lists(values: Iterable[Sequence[str]]) -> pd.Series:
    return pd.Series([list(v) for v in values], dtype=object)


def _frame(columns: Mapping[str, pd.Series | list[Any]], order: Sequence[str]) -> ReadableFrame:
    frame = ReadableFrame({name: columns[name] for name in order})
    return frame.reset_index(drop=True)


def tasks_frame(tasks: Sequence[TaskInfo]) -> ReadableFrame:
    """One row per task, newest first as the coordinator lists them."""
    started = _utc(t.started_at for t in tasks)
    ended = _utc(t.ended_at for t in tasks)
    usages = [t.usage for t in tasks]
    columns = {
        "uuid": _text(t.uuid for t in tasks),
        "task_id": pd.Series([t.task_id for t in tasks], dtype="int64"),
        "group": _text(t.group_name for t in tasks),
        "creator": _text(t.creator_username for t in tasks),
        "state": pd.Series([t.state.value for t in tasks], dtype=TASK_STATES),
        "exec_state": pd.Series([t.exec_state.value if t.exec_state else None for t in tasks], dtype=EXEC_STATES),
        "command": _text(shlex.join(t.spec.args) for t in tasks),
        "tags": _lists(t.tags for t in tasks),
        "labels": _lists(t.labels for t in tasks),
        "priority": pd.Series([t.priority for t in tasks], dtype="int64"),
        "timeout": pd.to_timedelta(pd.Series([t.timeout for t in tasks], dtype="int64"), unit="s"),
        "attempts": pd.Series([t.attempts for t in tasks], dtype="int64"),
        "exit_status": pd.Series([t.result.exit_status if t.result else None for t in tasks], dtype="Int64"),
        "msg": _text(t.result.msg.value if t.result and t.result.msg else None for t in tasks),
        "created_at": _utc(t.created_at for t in tasks),
        "updated_at": _utc(t.updated_at for t in tasks),
        "started_at": started,
        "ended_at": ended,
        "duration": ended - started,
        "worker": _text(t.reporter_uuid for t in tasks),
        "upstream": _text(t.upstream_task_uuid for t in tasks),
        "downstream": _text(t.downstream_task_uuid for t in tasks),
        "cpu_s": pd.Series([usage.cpu_s if usage else None for usage in usages], dtype="Float64"),
        "max_rss": pd.Series([usage.max_rss if usage else None for usage in usages], dtype="Int64"),
        "cpu_efficiency": pd.Series([usage.cpu_efficiency if usage else None for usage in usages], dtype="Float64"),
        "gpu_max_memory": pd.Series([usage.gpu_max_memory if usage else None for usage in usages], dtype="Int64"),
        "cached_from": _text(t.cached_from for t in tasks),
    }
    return _frame(columns, TASK_COLUMNS)


def tasks_frame_from_columns(table: pa.Table) -> ReadableFrame:
    """``tasks_frame`` of the same tasks, from the columnar listing's Arrow table: the same columns,
    dtypes and values."""
    dtypes = tasks_frame([]).dtypes  # the paged listing's frame is the reference
    columns: dict[str, pd.Series] = {}
    for name in TASK_COLUMNS:
        column = table.column(name)
        if pa.types.is_list(column.type):
            columns[name] = pd.Series(column.to_pylist(), dtype=object)  # fresh lists, one per row
        else:
            columns[name] = column.to_pandas(types_mapper=_PANDAS_TYPES.get).astype(dtypes[name])
    return _frame(columns, TASK_COLUMNS)


def workers_frame(workers: Sequence[WorkerInfo]) -> ReadableFrame:
    columns = {
        "worker_id": _text(w.worker_id for w in workers),
        "state": pd.Series([w.state.value for w in workers], dtype=WORKER_STATES),
        "tags": _lists(w.tags for w in workers),
        "labels": _lists(w.labels for w in workers),
        "creator": _text(w.creator_username for w in workers),
        "last_heartbeat": _utc(w.last_heartbeat for w in workers),
        "task": _text(w.assigned_task_id for w in workers),
        "created_at": _utc(w.created_at for w in workers),
        "updated_at": _utc(w.updated_at for w in workers),
    }
    return _frame(columns, WORKER_COLUMNS)


def attachments_frame(attachments: Sequence[AttachmentQueryInfo]) -> ReadableFrame:
    columns = {
        "key": _text(a.key for a in attachments),
        "size": pd.Series([a.size for a in attachments], dtype="int64"),
        "created_at": _utc(a.created_at for a in attachments),
        "updated_at": _utc(a.updated_at for a in attachments),
    }
    return _frame(columns, ATTACHMENT_COLUMNS)


def alerts_frame(alerts: Sequence[AlertInfo]) -> ReadableFrame:
    """A group's campaign alerts, oldest first."""
    columns = {
        "id": pd.Series([a.id for a in alerts], dtype="int64"),
        "label": _text(a.label for a in alerts),
        "on": _lists([event.value for event in a.on] for a in alerts),
        "failures": pd.Series([a.failures for a in alerts], dtype="Int64"),
        "failure_share": pd.Series([a.failure_share for a in alerts], dtype="Float64"),
        "url": _text(a.url for a in alerts),
        "secret_hint": _text(a.secret_hint for a in alerts),
        "active": pd.Series([a.active for a in alerts], dtype="bool"),
        "fired_at": _utc(a.fired_at for a in alerts),
        "last_event": _text(a.last_event.value if a.last_event else None for a in alerts),
        "delivery": _text(a.delivery for a in alerts),
        "group": _text(a.group_name for a in alerts),
        "creator": _text(a.creator_username for a in alerts),
        "created_at": _utc(a.created_at for a in alerts),
    }
    return _frame(columns, ALERT_COLUMNS)


def groups_frame(groups: Mapping[str, Role]) -> ReadableFrame:
    """Your groups and your role in each."""
    names = sorted(groups)
    return ReadableFrame({
        "group": pd.Series(names, dtype="string"),
        "role": pd.Series([groups[n].value for n in names], dtype=ROLES),
    })


def to_frame(result: Any) -> Any:
    """A listing answer as a DataFrame; anything else unchanged (the ``%mito`` magic's view)."""
    if isinstance(result, TasksQueryResp):
        return tasks_frame(result.tasks)
    if isinstance(result, WorkersQueryResp):
        return workers_frame(result.workers)
    if isinstance(result, AttachmentsQueryResp):
        return attachments_frame(result.attachments)
    if isinstance(result, AlertsResp):
        return alerts_frame(result.alerts)
    if isinstance(result, dict) and all(isinstance(role, Role) for role in result.values()):
        return groups_frame(result)
    return result
