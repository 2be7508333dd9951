"""What the dashboard knows of a group's tasks, kept as compact rows for the page.

One row per task, its values in ``COLUMNS`` order; the page receives them column-oriented (one
JSON array per column), all of them now and then, or the rows changed since the last update. The
counts are always of the whole group, whatever the page filters."""

from __future__ import annotations

import heapq
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from mito_lab.client.views import STATE_COLORS
from mito_lab.wire import TaskInfo, TaskState

COLUMNS = ("uuid", "id", "state", "exit", "msg", "exec", "command", "labels", "created", "started", "ended", "worker",
           "result", "cancellable", "cpu", "rss", "efficiency")
_AT = {name: index for index, name in enumerate(COLUMNS)}
STATES = [state.value for state in STATE_COLORS]
ACTIVE = {TaskState.Pending.value, TaskState.Ready.value, TaskState.Running.value}
Row = list[Any]


def _seconds(moment: datetime | str | None) -> float | None:
    """Epoch seconds, to the millisecond (what the page computes durations and timelines with)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return round(moment.timestamp(), 3)


def outcome(state: str, exit_status: int | None) -> str:
    """Where a task stands in the progress bar: done, failed, running or waiting."""
    if state == TaskState.Cancelled.value or (exit_status is not None and exit_status != 0):
        return "failed"
    if state == TaskState.Finished.value:
        return "done"
    return "running" if state == TaskState.Running.value else "waiting"


def row_of_info(info: TaskInfo, has_result: bool = False) -> Row:
    exit_status = info.result.exit_status if info.result else None
    return [
        str(info.uuid), info.task_id, info.state.value, exit_status,
        info.result.msg.value if info.result and info.result.msg else None,
        info.exec_state.value if info.exec_state else None,
        shlex.join(info.spec.args),
        ", ".join(info.labels), _seconds(info.created_at), _seconds(info.started_at), _seconds(info.ended_at),
        str(info.reporter_uuid) if info.reporter_uuid else None, has_result,
        info.state.value in ACTIVE and info.result is None and not info.cancel_requested,
        *((info.usage.cpu_s, info.usage.max_rss, info.usage.cpu_efficiency) if info.usage else (None, None, None)),
    ]


def rows_of_columns(table: pa.Table, with_result: set[str]) -> Iterator[Row]:
    """Rows from ``POST /tasks/query/columns``'s answer (``wire.task_columns_schema``)."""
    column = {name: table.column(name).to_pylist() for name in
              ("uuid", "task_id", "state", "exit_status", "msg", "exec_state", "command", "labels", "worker",
               "cpu_s", "max_rss", "cpu_efficiency")}
    moments = {name: table.column(name).cast(pa.int64()).to_pylist() for name in ("created_at", "started_at", "ended_at")}
    for index, task_uuid in enumerate(column["uuid"]):
        state, exit_status = column["state"][index], column["exit_status"][index]
        yield [
            task_uuid, column["task_id"][index], state, exit_status, column["msg"][index], column["exec_state"][index],
            column["command"][index], ", ".join(column["labels"][index] or ()),
            *(None if moments[name][index] is None else round(moments[name][index] / 1e6, 3) for name in ("created_at", "started_at", "ended_at")),
            column["worker"][index], task_uuid in with_result,
            state in ACTIVE and exit_status is None,  # a cancellation already asked is only known from events
            column["cpu_s"][index], column["max_rss"][index], column["cpu_efficiency"][index],
        ]


class TaskStore:
    """The rows of one group, and which changed since the page last heard of them. The counts per
    state and per outcome are kept as rows change (a summary costs nothing however many rows);
    ``beyond`` counts, per state, the group's tasks older than the rows."""

    def __init__(self, rows: Iterable[Row] = (), group_totals: dict[str, int] | None = None) -> None:
        """``group_totals``: the group's tasks per state, when it has more than the rows."""
        self.rows: dict[str, Row] = {row[0]: row for row in rows}
        self.counts: Counter[str] = Counter(row[_AT["state"]] for row in self.rows.values())
        self.outcomes: Counter[str] = Counter(outcome(row[_AT["state"]], row[_AT["exit"]]) for row in self.rows.values())
        self.beyond = {state: max(0, number - self.counts[state]) for state, number in (group_totals or {}).items()}
        # where the rows begin when the group has more tasks: older ones are only counted
        self.horizon = min((row[1] for row in self.rows.values()), default=None) if group_totals else None
        self.changed: set[str] = set()
        self.changed_since_table: set[str] = set()  # rows the page's table state is behind on

    def __contains__(self, task_uuid: str) -> bool:
        return task_uuid in self.rows

    def value(self, task_uuid: str, column: str) -> Any:
        return self.rows[task_uuid][_AT[column]]

    def put(self, row: Row) -> None:
        known = self.rows.get(row[0])
        if known is not None:
            self._count((known[_AT["state"]], known[_AT["exit"]]), -1)
        self.rows[row[0]] = row
        self._count((row[_AT["state"]], row[_AT["exit"]]), 1)
        self._touched(row[0])

    def _count(self, state_and_exit: tuple[str, int | None], sign: int) -> None:
        self.counts[state_and_exit[0]] += sign
        self.outcomes[outcome(*state_and_exit)] += sign

    def _touched(self, task_uuid: str) -> None:
        self.changed.add(task_uuid)
        self.changed_since_table.add(task_uuid)

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Merge a task event (``server/services/activity.py``) into its row; False if the task
        has no row. Returns True also when the task has just ended (its result may be asked for)."""
        row = self.rows.get(event["uuid"])
        if row is None:
            return False
        counted = row[_AT["state"]], row[_AT["exit"]]
        row[_AT["state"]] = event["state"]
        row[_AT["exec"]] = event.get("exec_state")
        if event.get("archived") and event.get("exit_status") is not None:
            row[_AT["exit"]], row[_AT["msg"]] = event["exit_status"], event.get("msg")
        row[_AT["started"]] = _seconds(event.get("started_at"))
        row[_AT["ended"]] = _seconds(event.get("ended_at"))
        if event.get("worker"):
            row[_AT["worker"]] = event["worker"]
        if "cpu_s" in event:  # the run's cost, on the event of its commit
            row[_AT["cpu"]], row[_AT["rss"]], row[_AT["efficiency"]] = event["cpu_s"], event["max_rss"], event["cpu_efficiency"]
        row[_AT["cancellable"]] = not event.get("archived") and event["state"] in ACTIVE and not event.get("cancel_requested")
        if (row[_AT["state"]], row[_AT["exit"]]) != counted:  # most events change only the fine state
            self._count(counted, -1)
            self._count((row[_AT["state"]], row[_AT["exit"]]), 1)
        self._touched(event["uuid"])
        return True

    def mark_results(self, task_uuids: Iterable[str]) -> bool:
        """These tasks have a result artifact; True if that is news for any."""
        news = False
        for task_uuid in task_uuids:
            if task_uuid in self.rows and not self.rows[task_uuid][_AT["result"]]:
                self.rows[task_uuid][_AT["result"]] = news = True
                self._touched(task_uuid)
        return news

    # --- what the page receives ---------------------------------------------------------------

    def columns(self, task_uuids: Iterable[str] | None = None) -> dict[str, Sequence[Any]]:
        """Rows as one array per column (all rows, or those listed)."""
        rows = list(self.rows.values()) if task_uuids is None else [self.rows[u] for u in task_uuids if u in self.rows]
        return dict(zip(COLUMNS, zip(*rows))) if rows else dict.fromkeys(COLUMNS, ())

    def take_changes(self) -> list[str]:
        changed, self.changed = sorted(self.changed), set()
        return changed

    def summary(self) -> dict[str, Any]:
        """Counts per state and the progress bar's parts, of the whole group."""
        counts = {**dict.fromkeys(STATES, 0), **{state: n for state, n in self.counts.items() if n}}
        progress = {name: self.outcomes[name] for name in ("done", "failed", "running", "waiting")}
        for state, number in self.beyond.items():
            counts[state] = counts.get(state, 0) + number
            # tasks beyond the rows have no known exit status: the ended ones count as done
            progress[outcome(state, None)] += number
        return {"counts": counts, "progress": progress, "total": sum(counts.values()), "shown": len(self.rows)}

    def newest(self, number: int) -> list[dict[str, Any]]:
        return [dict(zip(COLUMNS, row)) for row in heapq.nlargest(number, self.rows.values(), key=lambda row: row[1])]
