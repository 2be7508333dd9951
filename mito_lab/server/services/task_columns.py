"""Tasks as columns (``POST /tasks/query/columns``): one Core query, streamed from the database in
partitions, each turned into an Arrow record batch of the wire's task columns
(``wire.task_columns_schema``). No ORM objects, no per-row validation: the database hands over
uuids as text and times as numbers or text, and Arrow makes each column an array in one call."""

from __future__ import annotations

import functools
import shlex
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import Group, Task, User, arrow_timestamp, uuid_text
from mito_lab.wire import TaskExecState, TaskState, task_columns_schema

ROWS_PER_BATCH = 10_000
"""Rows read from the database, and sent, at a time: the memory a listing holds, whatever its size."""

_tasks = Task.__table__
# a task has a result (exit status and message) once archived with an exit status, as in TaskInfo
_HAS_RESULT = sa.and_(_tasks.c.archived_at.is_not(None), _tasks.c.exit_status.is_not(None))
# Each wire column that the database gives as is, or nearly, labelled with its wire name; JSON
# columns are read as their text (parsed here, not by the driver), enums as their names.
_COLUMNS = (
    sa.select(
        uuid_text(_tasks.c.uuid).label("uuid"),
        _tasks.c.task_id,
        Group.group_name.label("group"),
        User.username.label("creator"),
        sa.type_coerce(_tasks.c.state, sa.String).label("state"),
        sa.type_coerce(_tasks.c.exec_state, sa.String).label("exec_state"),
        sa.cast(_tasks.c.spec["args"], sa.Text).label("args"),
        sa.cast(_tasks.c.tags, sa.Text).label("tags"),
        sa.cast(_tasks.c.labels, sa.Text).label("labels"),
        _tasks.c.priority,
        _tasks.c.timeout,
        _tasks.c.attempts,
        sa.case((_HAS_RESULT, _tasks.c.exit_status)).label("exit_status"),
        sa.case((_HAS_RESULT, sa.type_coerce(_tasks.c.result_msg, sa.String))).label("msg"),
        *(arrow_timestamp(_tasks.c[name]).label(name) for name in ("created_at", "updated_at", "started_at", "ended_at")),
        uuid_text(_tasks.c.reporter_uuid).label("worker"),
        uuid_text(_tasks.c.upstream_task_uuid).label("upstream"),
        uuid_text(_tasks.c.downstream_task_uuid).label("downstream"),
        _tasks.c.cpu_seconds.label("cpu_s"),
        _tasks.c.max_rss,
        sa.case((_tasks.c.wall_seconds > 0, _tasks.c.cpu_seconds / _tasks.c.wall_seconds / _tasks.c.cores)).label("cpu_efficiency"),
        _tasks.c.gpu_max_memory,
        uuid_text(_tasks.c.cached_from).label("cached_from"),
    )
    .join(User, User.id == _tasks.c.creator_id)
    .join(Group, Group.id == _tasks.c.group_id)
)
_NAMES = pa.array([state.value for state in TaskState])
_EXEC_NAMES = pa.array([state.value for state in TaskExecState])


async def task_column_batches(
    session: AsyncSession, conditions: Sequence[sa.ColumnElement[bool]], limit: int | None, offset: int | None
) -> AsyncIterator[pa.RecordBatch]:
    """The tasks matching ``conditions``, newest first, ``ROWS_PER_BATCH`` at a time."""
    statement = _COLUMNS.where(*conditions).order_by(_tasks.c.id.desc()).limit(limit).offset(offset)
    connection = await session.connection()  # Core rows: the ORM's row processing would cost a tenth more
    result = await connection.stream(statement.execution_options(yield_per=ROWS_PER_BATCH))
    names = list(result.keys())
    async for rows in result.partitions():
        yield _record_batch(dict(zip(names, zip(*rows), strict=True)))


def _record_batch(columns: dict[str, tuple[Any, ...]]) -> pa.RecordBatch:
    schema = task_columns_schema()
    started, ended = _moments(columns["started_at"]), _moments(columns["ended_at"])
    arrays = {
        "state": _named(columns["state"], _NAMES, schema.field("state").type),
        "exec_state": _named(columns["exec_state"], _EXEC_NAMES, schema.field("exec_state").type),
        "command": pa.array([_command(args) for args in columns["args"]], pa.string()),
        "tags": pa.array([orjson.loads(tags) for tags in columns["tags"]], schema.field("tags").type),
        "labels": pa.array([orjson.loads(labels) for labels in columns["labels"]], schema.field("labels").type),
        "timeout": pc.multiply(pa.array(columns["timeout"], pa.int64()), 1_000_000).cast(pa.duration("us")),
        "created_at": _moments(columns["created_at"]),
        "updated_at": _moments(columns["updated_at"]),
        "started_at": started,
        "ended_at": ended,
        "duration": pc.subtract(ended, started),
    }
    # the rest (text and integers) are the database's values as they come
    return pa.RecordBatch.from_arrays(
        [arrays[field.name] if field.name in arrays else pa.array(columns[field.name], field.type) for field in schema],
        schema=schema,
    )


def _moments(values: Sequence[int | str | None]) -> pa.Array:
    """``arrow_timestamp`` values (integers or text, by database) as UTC timestamps."""
    return pa.array(values).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def _named(values: Sequence[str | None], names: pa.Array, kind: pa.DataType) -> pa.DictionaryArray:
    """Enum names as indices into every name (null stays null)."""
    indices = pc.index_in(pa.array(values, pa.string()), value_set=names).cast(pa.int8())
    return pa.DictionaryArray.from_arrays(indices, names, ordered=kind.ordered)


@functools.lru_cache(maxsize=4096)
def _command(args: str) -> str:
    """A task's args (their JSON text) as one shell-quoted line; the tasks of a sweep or a batch
    mostly share theirs, so each distinct line is quoted once."""
    return shlex.join(orjson.loads(args))
