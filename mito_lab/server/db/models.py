"""SQLAlchemy models of the coordinator's state (reference section 3).

One deliberate change from the reference: active and archived tasks live in **one** ``tasks``
table with an ``archived_at`` column. It answers the same queries, lets listings page across both
with one ORDER BY, and a commit is an UPDATE instead of a row move.

Tags and labels are kept twice on purpose: a JSON list on the row (read whole, in order) and one
row per value in ``task_tags`` / ``task_labels`` (so "task tags are a subset of the worker's tags"
and "contains all these labels" are plain, indexed SQL on SQLite and PostgreSQL alike). Only
``services.tasks.set_task_marks`` writes them, so they cannot drift.
"""

from __future__ import annotations

import uuid as uuid_module
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, make_transient_to_detached, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from mito_lab.wire import (
    AlertEvent,
    ArtifactContentType,
    Role,
    TaskExecState,
    TaskResultMessage,
    TaskState,
    UserState,
    WorkerState,
)

DEFAULT_STORAGE_QUOTA = 16_000_000_000  # 16 GB, decimal, as the reference
DEFAULT_GROUP_QUOTA = 8


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class arrow_timestamp(FunctionElement[Any]):  # noqa: N801 - an SQL function, named like one
    """A ``UTCDateTime`` column in the cheapest form that Arrow's cast to a timestamp reads, for
    listings of many rows (no datetime object per value): microseconds since the epoch on
    PostgreSQL, the stored ``YYYY-MM-DD HH:MM:SS.ffffff`` text (UTC) as is on SQLite, where
    computing the number costs more than Arrow's parsing."""

    type = sa.types.NullType()
    inherit_cache = True


@compiles(arrow_timestamp)
def _arrow_timestamp_stored(element: arrow_timestamp, compiler: SQLCompiler, **options: Any) -> str:
    return compiler.process(element.clauses, **options)


@compiles(arrow_timestamp, "postgresql")
def _arrow_timestamp_postgresql(element: arrow_timestamp, compiler: SQLCompiler, **options: Any) -> str:
    # EXTRACT gives a numeric (PostgreSQL 14+), exact to the microsecond
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **options)}) * 1000000 AS BIGINT)"


class epoch_seconds(FunctionElement[float]):  # noqa: N801 - an SQL function, named like one
    """A ``UTCDateTime`` column as seconds since the epoch (a float), for arithmetic with durations
    stored as seconds: PostgreSQL's ``EXTRACT``; on SQLite from ``julianday`` of the stored text
    (to the millisecond)."""

    type = sa.Float()
    inherit_cache = True


@compiles(epoch_seconds, "postgresql")
def _epoch_seconds_postgresql(element: epoch_seconds, compiler: SQLCompiler, **options: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **options)}) AS DOUBLE PRECISION)"


@compiles(epoch_seconds, "sqlite")
def _epoch_seconds_sqlite(element: epoch_seconds, compiler: SQLCompiler, **options: Any) -> str:
    return f"((julianday({compiler.process(element.clauses, **options)}) - 2440587.5) * 86400.0)"


class uuid_text(FunctionElement[str]):  # noqa: N801 - an SQL function, named like one
    """A ``Uuid`` column as its canonical text (lower case, with hyphens), formatted by the database."""

    type = sa.String()
    inherit_cache = True


@compiles(uuid_text, "postgresql")
def _uuid_text_postgresql(element: uuid_text, compiler: SQLCompiler, **options: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **options)} AS TEXT)"


@compiles(uuid_text, "sqlite")
def _uuid_text_sqlite(element: uuid_text, compiler: SQLCompiler, **options: Any) -> str:
    # stored as 32 lower-case hex digits
    value = compiler.process(element.clauses, **options)
    parts = [f"substr({value}, {start}, {length})" for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
    return " || '-' || ".join(parts)


def _enum(enum_class: type, name: str) -> sa.Enum:
    return sa.Enum(
        enum_class,
        name=name,
        native_enum=False,
        length=32,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON, list[str]: sa.JSON}


ModelT = TypeVar("ModelT", bound=Base)


def detached(model: type[ModelT], columns: Mapping[str, Any]) -> ModelT:
    """A model object of a row read as Core columns (the hot paths read no entities), as if a
    session that has closed since had loaded it."""
    instance = model(**columns)
    make_transient_to_detached(instance)
    return instance


class Timestamps:
    """An integer surrogate key (BIGINT; INTEGER on SQLite so it autoincrements) and row times."""

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(Timestamps, Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(sa.String(255), unique=True)
    encrypted_password: Mapped[str] = mapped_column(sa.Text)
    auth_signature: Mapped[int | None] = mapped_column(sa.BigInteger)
    current_sign_in_at: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]
    current_sign_in_ip: Mapped[str | None] = mapped_column(sa.String(64))
    last_sign_in_ip: Mapped[str | None] = mapped_column(sa.String(64))
    admin: Mapped[bool] = mapped_column(default=False)
    state: Mapped[UserState] = mapped_column(_enum(UserState, "user_state"), default=UserState.Active)
    group_quota: Mapped[int] = mapped_column(default=DEFAULT_GROUP_QUOTA)
    group_count: Mapped[int] = mapped_column(default=0)


class Group(Timestamps, Base):
    __tablename__ = "groups"

    group_name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    creator_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    state: Mapped[UserState] = mapped_column(_enum(UserState, "group_state"), default=UserState.Active)
    task_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    storage_quota: Mapped[int] = mapped_column(sa.BigInteger, default=DEFAULT_STORAGE_QUOTA)
    storage_used: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class UserGroup(Base):
    __tablename__ = "user_group"
    __table_args__ = (sa.UniqueConstraint("user_id", "group_id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)

    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))


class Worker(Timestamps, Base):
    __tablename__ = "workers"
    __table_args__ = (sa.Index("ix_workers_state_heartbeat", "state", "last_heartbeat"),)

    worker_id: Mapped[uuid_module.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid_module.uuid4)
    creator_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    labels: Mapped[list[str]] = mapped_column(default=list)
    state: Mapped[WorkerState] = mapped_column(_enum(WorkerState, "worker_state"), default=WorkerState.Normal)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_interval: Mapped[float | None]  # seconds, as the worker said when it registered; None: it did not say
    # A worker's current task is the unarchived task whose assigned_worker_id is this worker.


class GroupWorker(Base):
    __tablename__ = "group_worker"
    __table_args__ = (
        sa.UniqueConstraint("group_id", "worker_id"),
        sa.Index("ix_group_worker_group_role", "group_id", "role"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)

    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id", ondelete="RESTRICT"))
    worker_id: Mapped[int] = mapped_column(sa.ForeignKey("workers.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))


class Task(Timestamps, Base):
    __tablename__ = "tasks"
    __table_args__ = (
        sa.UniqueConstraint("group_id", "task_id"),
        # dispatch: the best Ready tasks of a group, FIFO within a priority, in the claim's order
        sa.Index("ix_tasks_dispatch", "state", "group_id", sa.text("priority DESC"), "id"),
        sa.Index("ix_tasks_group_listing", "group_id", "id"),
        sa.Index("ix_tasks_updated_at", "updated_at"),  # coordinators notice each other's changes by it
        # the tasks a worker holds (its unarchived ones), read on every report without its history
        sa.Index("ix_tasks_held", "assigned_worker_id", "archived_at"),
        # result caching: a group's runs by the key of what they ran, newest last; only the tasks
        # submitted with cache or force have a key, so the index costs the other submits nothing
        sa.Index("ix_tasks_cache", "group_id", "cache_key", "id",
                 sqlite_where=sa.text("cache_key IS NOT NULL"), postgresql_where=sa.text("cache_key IS NOT NULL")),
    )

    uuid: Mapped[uuid_module.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid_module.uuid4)
    creator_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"))
    task_id: Mapped[int] = mapped_column(sa.BigInteger)
    tags: Mapped[list[str]] = mapped_column(default=list)
    labels: Mapped[list[str]] = mapped_column(default=list)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState, "task_state"))
    assigned_worker_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("workers.id", ondelete="SET NULL")
    )
    timeout: Mapped[int] = mapped_column(comment="seconds")
    priority: Mapped[int] = mapped_column(default=0)
    spec: Mapped[dict[str, Any]]
    exit_status: Mapped[int | None]
    result_msg: Mapped[TaskResultMessage | None] = mapped_column(_enum(TaskResultMessage, "task_result_msg"))
    archived_at: Mapped[datetime | None] = mapped_column(index=True)
    # when a worker took the current attempt, and when the task reached Finished or Cancelled
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # how many times a worker has taken the task; a lost worker re-queues it until max_attempts
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=3, server_default="3")
    # the latest TaskExecState its worker reported (watch, dashboards)
    exec_state: Mapped[TaskExecState | None] = mapped_column(_enum(TaskExecState, "task_exec_state"))
    # a user cancelled it while a worker runs it: the worker is told and kills it
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    reporter_uuid: Mapped[uuid_module.UUID | None] = mapped_column(sa.Uuid)
    upstream_task_uuid: Mapped[uuid_module.UUID | None] = mapped_column(sa.Uuid)
    downstream_task_uuid: Mapped[uuid_module.UUID | None] = mapped_column(sa.Uuid)
    # what the committed run cost (wire.TaskUsage), as its worker measured it; None from workers
    # that do not measure (the reference's)
    wall_seconds: Mapped[float | None]
    cpu_seconds: Mapped[float | None]
    max_rss: Mapped[int | None] = mapped_column(sa.BigInteger)
    cores: Mapped[float | None]
    gpu_max_memory: Mapped[int | None] = mapped_column(sa.BigInteger)
    # result caching (services/cache.py): the key of what a run submitted with cache or force ran
    # (None for every other task, and for cache hits), and for a hit, the run whose artifacts it has
    cache_key: Mapped[str | None] = mapped_column(sa.String(64))
    cached_from: Mapped[uuid_module.UUID | None] = mapped_column(sa.Uuid)


class TaskTag(Base):
    __tablename__ = "task_tags"
    __table_args__ = (sa.Index("ix_task_tags_tag", "tag"),)

    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(255), primary_key=True)


class TaskLabel(Base):
    __tablename__ = "task_labels"
    __table_args__ = (sa.Index("ix_task_labels_label", "label"),)

    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(255), primary_key=True)


class Artifact(Timestamps, Base):
    __tablename__ = "artifacts"
    # a cache hit's artifacts name its source's objects: an object is deleted, and its size given
    # back, when no artifact names it any more (looked up by object_key)
    __table_args__ = (sa.UniqueConstraint("task_uuid", "content_type"), sa.Index("ix_artifacts_object_key", "object_key"))

    task_uuid: Mapped[uuid_module.UUID] = mapped_column(sa.Uuid)
    content_type: Mapped[ArtifactContentType] = mapped_column(_enum(ArtifactContentType, "artifact_type"))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    # the object holding it: the upload's own name; None for artifacts stored before uploads had
    # their own names (``<task uuid>/<type>.tar.gz``)
    object_key: Mapped[str | None] = mapped_column(sa.String(1024))
    digest: Mapped[str | None] = mapped_column(sa.String(64))  # of the object's content, once a cache key needed it


class UploadGrant:
    """An upload URL handed out, kept until the URL expires. What arrives at its object becomes the
    record (and is charged) only if it has the declared size and its uploader may still write;
    each URL names an object of its own, so a URL handed out earlier never overwrites what a later
    one recorded (``services/uploads.py``)."""

    size: Mapped[int] = mapped_column(sa.BigInteger)
    object_key: Mapped[str | None] = mapped_column(sa.String(1024))  # None: a grant from before 0007
    uploader_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))  # None: the task's worker
    expires_at: Mapped[datetime]
    recorded: Mapped[bool] = mapped_column(default=False, server_default=sa.false())


class ArtifactUpload(Timestamps, UploadGrant, Base):
    """An artifact's upload URL, handed to the task's worker (its outputs, recorded when the task
    is committed or its worker lost) or to a user of the group."""

    __tablename__ = "artifact_uploads"
    __table_args__ = (sa.Index("ix_artifact_uploads_task", "task_uuid", "content_type"),)

    task_uuid: Mapped[uuid_module.UUID] = mapped_column(sa.Uuid)
    content_type: Mapped[ArtifactContentType] = mapped_column(_enum(ArtifactContentType, "artifact_type"))


class Attachment(Timestamps, Base):
    __tablename__ = "attachments"
    __table_args__ = (sa.UniqueConstraint("group_id", "key"),)

    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"))
    key: Mapped[str] = mapped_column(sa.String(1024))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    object_key: Mapped[str | None] = mapped_column(sa.String(1024))  # None: ``<group>/<key>``, as before 0007
    digest: Mapped[str | None] = mapped_column(sa.String(64))  # of the object's content, once a cache key needed it


class AttachmentUpload(Timestamps, UploadGrant, Base):
    """An attachment's upload URL, handed to a user of the group."""

    __tablename__ = "attachment_uploads"
    __table_args__ = (sa.Index("ix_attachment_uploads_key", "group_id", "key"),)

    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"))
    key: Mapped[str] = mapped_column(sa.String(1024))


class TaskLog(Base):
    """The newest output of running (and recently ended) tasks, for live following."""

    __tablename__ = "task_logs"
    __table_args__ = (sa.Index("ix_task_logs_task_stream_offset", "task_id", "stream", "offset"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    stream: Mapped[str] = mapped_column(sa.String(6))
    offset: Mapped[int] = mapped_column(sa.BigInteger)
    length: Mapped[int]
    data: Mapped[str] = mapped_column(sa.Text)


class Alert(Timestamps, Base):
    """A campaign alert: the runs labelled ``label`` in a group notify a webhook when they are all
    done, or when their failures reach a threshold (``services/alerts.py``). Each event fires
    once for the runs there are: its mark is the newest task id of the label when it fired, and
    it fires again only once newer tasks carry the label (a rerun, a grid extended)."""

    __tablename__ = "alerts"
    __table_args__ = (sa.Index("ix_alerts_group_label", "group_id", "label"),)

    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id", ondelete="CASCADE"))
    creator_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(sa.String(255))
    events: Mapped[list[str]]  # AlertEvent values
    failures: Mapped[int | None]
    failure_share: Mapped[float | None]
    url: Mapped[str] = mapped_column(sa.String(2048))
    secret: Mapped[str] = mapped_column(sa.String(1024))  # the HMAC key: it signs, so it is kept as given
    done_mark: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    failures_mark: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    fired_at: Mapped[datetime | None]
    last_event: Mapped[AlertEvent | None] = mapped_column(_enum(AlertEvent, "alert_event"))
    delivery: Mapped[str | None] = mapped_column(sa.String(1024))
