"""Every request and response body of the HTTP API: the one contract that the coordinator, the
worker and the client import. Shapes follow the reference (``mitosis-0.6.md`` section 2); where
SPEC.md differs (ISO datetimes, plain ``password`` at login, optional fields with defaults) it says so.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import uuid as uuid_module
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from mito_lab.config import format_duration, parse_duration

if TYPE_CHECKING:
    import pyarrow as pa

UUID = uuid_module.UUID

# --- scalar types -------------------------------------------------------------------------------

_REFERENCE_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?) ([+-]\d{2}):(\d{2}):(\d{2})$"
)


def parse_timestamp(value: Any) -> Any:
    """Accept ISO 8601 and the reference's ``2024-01-15 10:30:00.123456 +00:00:00`` form."""
    if isinstance(value, str):
        match = _REFERENCE_TIMESTAMP.match(value.strip())
        if match:
            day, clock, hours, minutes, seconds = match.groups()
            offset = f"{hours}:{minutes}" + (f":{seconds}" if seconds != "00" else "")
            value = f"{day}T{clock}{offset}"
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp), PlainSerializer(_iso, return_type=str)]
WireDuration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="1-255 characters of A-Z a-z 0-9 _ -")]
Md5Password = Annotated[list[Annotated[int, Strict(), Field(ge=0, le=255)]], Field(min_length=16, max_length=16)]


def md5_password(password: str) -> list[int]:
    """The client-side password digest the reference sends instead of the password."""
    return list(hashlib.md5(password.encode("utf-8")).digest())


def _dedupe(values: Any) -> Any:
    """Sets travel as JSON arrays; duplicates collapse, order is kept. Items of the wrong type are
    left for the item validator to refuse."""
    if isinstance(values, (list, tuple)):
        if len(values) < 2:  # most sets of a batch's tasks: nothing to collapse
            return list(values)
        try:
            return list(dict.fromkeys(values))
        except TypeError:  # unhashable items (objects, arrays)
            return values
    return values


# Numbers and flags in requests are strict: ``false`` is not 0 and ``"yes"`` is not true.
INT32_MAX = 2**31 - 1
Int32 = Annotated[int, Strict(), Field(ge=-(2**31), le=INT32_MAX)]
"""Priorities, exit statuses and task ids: what the database's integer columns hold."""
MAX_SIZE = 2**62
Size = Annotated[int, Strict(), Field(ge=0, le=MAX_SIZE)]
"""Byte counts, offsets and page sizes: non-negative and within the database's 64-bit columns."""
Flag = Annotated[bool, Strict()]

StrSet = Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]], BeforeValidator(_dedupe)]

# --- enums --------------------------------------------------------------------------------------


class _LenientEnum(str, Enum):
    """Enums read case-insensitively and through the aliases the reference accepts."""

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            lowered = value.lower()
            for member in cls:
                if member.value.lower() == lowered:
                    return member
            alias = cls._aliases().get(lowered)
            if alias is not None:
                return cls(alias)
        return None


class TaskState(_LenientEnum):
    Pending = "Pending"
    Ready = "Ready"
    Running = "Running"
    Finished = "Finished"
    Cancelled = "Cancelled"
    Unknown = "Unknown"


class Role(_LenientEnum):
    """A user's role in a group, or a group's role on a worker. Read < Write < Admin."""

    Read = "Read"
    Write = "Write"
    Admin = "Admin"

    @property
    def rank(self) -> int:
        return ("Read", "Write", "Admin").index(self.value)

    def and_above(self) -> list["Role"]:
        return [role for role in Role if role.rank >= self.rank]


class UserState(_LenientEnum):
    Active = "Active"
    Locked = "Locked"
    Deleted = "Deleted"


GroupState = UserState


class WorkerState(_LenientEnum):
    Normal = "Normal"
    GracefulShutdown = "GracefulShutdown"


class WorkerShutdownOp(_LenientEnum):
    Graceful = "Graceful"
    Force = "Force"


class ArtifactContentType(_LenientEnum):
    result = "result"
    exec_log = "exec-log"
    std_log = "std-log"

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {
            "exec": "exec-log", "execlog": "exec-log",
            "std": "std-log", "stdlog": "std-log", "terminal": "std-log",
        }

    @property
    def file_name(self) -> str:
        return f"{self.value}.tar.gz"


class AttachmentContentType(_LenientEnum):
    NoSet = "NoSet"


class TaskResultMessage(_LenientEnum):
    FetchResourceTimeout = "FetchResourceTimeout"
    ExecTimeout = "ExecTimeout"
    UploadResultTimeout = "UploadResultTimeout"
    ResourceNotFound = "ResourceNotFound"
    ResourceForbidden = "ResourceForbidden"
    WatchTimeout = "WatchTimeout"
    UserCancellation = "UserCancellation"
    SubmitNewTaskFailed = "SubmitNewTaskFailed"
    # mito_lab: every attempt lost its worker (it was re-queued max_attempts times)
    AttemptsExhausted = "AttemptsExhausted"
    # mito_lab: the worker could not make the task's files (a resource's path, a full disk), or pack
    # or store what it left; the reason ends the task's stderr log, or the worker's log
    WorkerError = "WorkerError"
    # mito_lab: the coordinator refused a report of the task's worker, which then drops the task
    ReportRefused = "ReportRefused"
    # mito_lab: an output's upload never arrived whole in the object store (it was not recorded)
    OutputsLost = "OutputsLost"


class TaskExecState(_LenientEnum):
    """The worker-side fine state of a running task (reference 3.4); ``code`` is the Redis integer."""

    WorkerExited = "WorkerExited"
    FetchResource = "FetchResource"
    FetchResourceFinished = "FetchResourceFinished"
    FetchResourceError = "FetchResourceError"
    FetchResourceTimeout = "FetchResourceTimeout"
    FetchResourceNotFound = "FetchResourceNotFound"
    FetchResourceForbidden = "FetchResourceForbidden"
    Watch = "Watch"
    WatchFinished = "WatchFinished"
    WatchTimeout = "WatchTimeout"
    ExecPending = "ExecPending"
    ExecSpawned = "ExecSpawned"
    ExecFinished = "ExecFinished"
    ExecTimeout = "ExecTimeout"
    UploadResult = "UploadResult"
    UploadFinishedResult = "UploadFinishedResult"
    UploadCancelledResult = "UploadCancelledResult"
    UploadResultFinished = "UploadResultFinished"
    UploadResultTimeout = "UploadResultTimeout"
    TaskCommitted = "TaskCommitted"
    Unknown = "Unknown"

    @property
    def code(self) -> int:
        return _EXEC_STATE_CODES[self]


_EXEC_STATE_CODES = {
    member: code
    for code, member in zip([-1, *range(1, 20), -99], TaskExecState, strict=True)
}

# --- bases --------------------------------------------------------------------------------------


class Request(BaseModel):
    """Request bodies reject unknown fields, so a typo gets a clear 400 instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    """Response bodies ignore unknown fields, so an older client keeps working with a newer server."""

    model_config = ConfigDict(extra="ignore")


class ErrorMsg(Response):
    msg: str


# --- misc, login, users -------------------------------------------------------------------------


class HealthResp(Response):
    status: str = "ok"


class _PasswordReq(Request):
    """Passwords come as the reference's MD5 byte array, or (mito_lab) as plain text."""

    md5_password: Md5Password | None = None
    password: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _one_password(self) -> "_PasswordReq":
        if (self.md5_password is None) == (self.password is None):
            raise ValueError("give exactly one of md5_password and password")
        return self

    def digest(self) -> bytes:
        if self.md5_password is not None:
            return bytes(self.md5_password)
        return bytes(md5_password(self.password or ""))


class LoginReq(_PasswordReq):
    username: str = Field(max_length=255)
    retain: Flag = False


class LoginResp(Response):
    token: str


class CreateUserReq(_PasswordReq):
    username: Name
    admin: Flag = False


class ChangePasswordReq(Request):
    old_md5_password: Md5Password
    new_md5_password: Md5Password


class AdminChangePasswordReq(Request):
    new_md5_password: Md5Password


class ChangeUserStateReq(Request):
    state: UserState


class UserStateResp(Response):
    state: UserState


class GroupQuotaReq(Request):
    group_quota: str = Field(pattern=r"^[+=-]?\d+$", max_length=32)


class GroupQuotaResp(Response):
    group_quota: int


class StorageQuotaReq(Request):
    storage_quota: str = Field(max_length=64, description='a size such as "10GiB", "=10GiB", "+500MB" or "-1GB"')


class StorageQuotaResp(Response):
    storage_quota: int


class ShutdownReq(Request):
    secret: str


class UserGroupsResp(Response):
    groups: dict[str, Role]


class RedisConnectionInfo(Response):
    url: str | None


# --- groups and attachments ---------------------------------------------------------------------


class CreateGroupReq(Request):
    group_name: Name


class GroupQueryInfo(Response):
    group_name: str
    creator_username: str
    created_at: Timestamp
    updated_at: Timestamp
    state: GroupState
    task_count: int
    storage_quota: int
    storage_used: int
    worker_count: int
    users_in_group: dict[str, Role] | None = None


class UpdateGroupMembersReq(Request):
    relations: dict[str, Role] = Field(min_length=1)


class RemoveGroupMembersReq(Request):
    users: StrSet = Field(min_length=1)


class UploadAttachmentReq(Request):
    key: str = Field(min_length=1, max_length=1023)
    content_length: Size


class UploadResp(Response):
    exist: bool
    url: str


class AttachmentMetadata(Response):
    content_type: AttachmentContentType = AttachmentContentType.NoSet
    size: int
    created_at: Timestamp
    updated_at: Timestamp


class AttachmentsQueryReq(Request):
    key: str | None = None
    limit: Size | None = None
    offset: Size | None = None
    count: Flag = False


class AttachmentQueryInfo(AttachmentMetadata):
    key: str


class AttachmentsQueryResp(Response):
    count: int
    attachments: list[AttachmentQueryInfo]
    group_name: str


class DownloadResp(Response):
    """``RemoteResourceDownloadResp``: a signed GET URL and the object's size."""

    url: str
    size: int


class AttachmentDownloadItem(DownloadResp):
    key: str


class AttachmentsDownloadResp(Response):
    downloads: list[AttachmentDownloadItem]
    group_name: str


class AttachmentKeysReq(Request):
    keys: StrSet = Field(min_length=1)


class DeleteAttachmentsResp(Response):
    deleted_count: int
    group_name: str


class DeleteAttachmentsListResp(DeleteAttachmentsResp):
    failed_keys: list[str]


# --- tasks --------------------------------------------------------------------------------------


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative path (resource paths, attachment keys), or ``None``.
    Refused: absolute paths, backslashes, control characters, and empty, ``.`` or ``..`` parts."""
    if not path or path.startswith("/"):
        return "it is empty or absolute"
    if "\\" in path or any(ord(ch) < 32 for ch in path):
        return "it contains a backslash or a control character"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "it has an empty, . or .. part"
    return None


def _relative_path(path: str) -> str:
    if relative_path_problem(path) is not None:
        raise ValueError("Resource local path is absolute or contains `..`")  # the reference's wording
    return path


class ArtifactRef(Request):
    uuid: UUID
    content_type: ArtifactContentType


class AttachmentRef(Request):
    key: str = Field(min_length=1, max_length=1023)


class ArtifactSource(Request):
    Artifact: ArtifactRef


class AttachmentSource(Request):
    Attachment: AttachmentRef


class RemoteResourceDownload(Request):
    remote_file: ArtifactSource | AttachmentSource
    local_path: Annotated[str, AfterValidator(_relative_path)]


class TaskSpec(Request):
    args: list[str] = Field(min_length=1)
    envs: dict[str, str] = {}
    resources: list[RemoteResourceDownload] = []
    terminal_output: Flag = False
    watch: tuple[UUID, TaskExecState] | None = None

    @field_validator("args")
    @classmethod
    def _program_given(cls, args: list[str]) -> list[str]:
        if not args[0]:
            raise ValueError("the program (args[0]) must not be empty")
        return args


def describe_validation_error(error: ValidationError) -> str:
    """One readable line: ``field.path: problem; other: problem``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _separate_resource_paths(spec: TaskSpec) -> TaskSpec:
    """Resources land at distinct paths, none inside another's: ``a`` and ``a/b`` cannot both be
    written. Checked on what is submitted, not on specs read back (stored ones stay readable)."""
    if len(spec.resources) < 2:
        return spec
    paths = sorted(PurePosixPath(resource.local_path) for resource in spec.resources)
    for first, second in zip(paths, paths[1:]):
        if first == second or first in second.parents:
            raise ValueError(f"resource local paths {str(first)!r} and {str(second)!r} clash: one would be written over the other")
    return spec


def _startable_environment(spec: TaskSpec) -> TaskSpec:
    """Every variable can be given to a process. Checked on what is submitted, as above."""
    for name in spec.envs:
        if not name or "=" in name:
            raise ValueError(f"environment variable name {name!r} must be non-empty and without '='")
    return spec


SubmittedSpec = Annotated[TaskSpec, AfterValidator(_separate_resource_paths), AfterValidator(_startable_environment)]
TaskTimeout = Annotated[WireDuration, Field(gt=timedelta(0), le=timedelta(seconds=INT32_MAX))]


class SubmitTaskReq(Request):
    group_name: Name | None = Field(default=None, description="defaults to the caller's own group")
    tags: StrSet = []
    labels: StrSet = []
    timeout: TaskTimeout = timedelta(minutes=10)
    priority: Int32 = 0
    task_spec: SubmittedSpec
    max_attempts: Annotated[int, Strict()] = Field(default=3, ge=1, le=100, description="runs allowed when workers are lost")
    # mito_lab, result caching; left out when false, so that a request without them is the
    # reference's exactly (its coordinator refuses unknown fields)
    cache: Flag = Field(
        default=False, exclude_if=lambda value: not value,
        description="answer from the group's newest run of the same args, envs, terminal_output, watch and resource "
        "contents that finished with exit status 0, if there is one: the task is created Finished with that run's "
        "artifacts (cached_from), and no worker runs it. Otherwise it runs, and later cache lookups find it. "
        "A chained task (MITO_NEW_TASK) is never answered from the cache",
    )
    force: Flag = Field(
        default=False, exclude_if=lambda value: not value,
        description="run even if the cache has an answer, and be the run that later cache lookups find",
    )


class SubmitTaskResp(Response):
    task_id: int
    uuid: UUID
    cached_from: UUID | None = Field(
        default=None, exclude_if=lambda value: value is None,  # unsaid, not sent: the reference's answer exactly
        description="a cache hit: the run whose artifacts the new task has (it is Finished already)",
    )


class ChangeTaskReq(Request):
    tags: StrSet | None = None
    timeout: TaskTimeout | None = None
    priority: Int32 | None = None
    task_spec: SubmittedSpec | None = None


class UpdateLabelsReq(Request):
    labels: StrSet


class UpdateTagsReq(Request):
    tags: StrSet


class TaskUsage(Request):
    """What a run cost, as its worker measured it over the task's whole process tree (mito_lab:
    the reference's workers send none)."""

    wall_s: Annotated[float, Strict()] = Field(ge=0, allow_inf_nan=False, description="seconds from the process's start to its end")
    cpu_s: Annotated[float, Strict()] = Field(ge=0, allow_inf_nan=False, description="user + system CPU seconds")
    max_rss: Annotated[int, Strict()] = Field(ge=0, le=2**62, description="peak resident memory, bytes")
    cores: Annotated[float, Strict()] = Field(gt=0, le=2**20, allow_inf_nan=False, description="CPUs the task could use: its worker's, shared among its slots")
    gpu_max_memory: Annotated[int, Strict()] | None = Field(None, ge=0, le=2**62, description="peak GPU memory, bytes, where the worker has nvidia-smi")

    @property
    def cpu_efficiency(self) -> float | None:
        return cpu_efficiency(self.cpu_s, self.wall_s, self.cores)


def cpu_efficiency(cpu_s: float, wall_s: float, cores: float) -> float | None:
    """CPU seconds per second of the cores a run had (1.0: every core busy the whole run)."""
    return cpu_s / wall_s / cores if wall_s > 0 else None


class TaskResultSpec(Request):
    exit_status: Int32
    msg: TaskResultMessage | None = None
    # left out when None: then this is the reference's ``{exit_status, msg}`` exactly (a
    # coordinator of the reference, or an earlier release, refuses a commit with the field)
    usage: TaskUsage | None = Field(None, exclude_if=lambda usage: usage is None, description="a worker's commit: what the run cost (TaskInfo.usage)")


COMPARISON_PATTERN = r"^\s*(=|!=|<=|>=|<|>)?\s*(-?\d{1,10})\s*$"
"""``exit_status`` and ``priority`` filters: ``N``, ``=N``, ``!=N``, ``<N``, ``<=N``, ``>N``, ``>=N``."""


def _int32_comparison(expression: str) -> str:
    number = int(re.match(COMPARISON_PATTERN, expression).group(2))  # type: ignore[union-attr]
    if not -(2**31) <= number <= INT32_MAX:
        raise ValueError(f"{number} is out of range ({-(2**31)} to {INT32_MAX})")
    return expression


Comparison = Annotated[str, Field(pattern=COMPARISON_PATTERN), AfterValidator(_int32_comparison)]


class TaskFilter(Request):
    creator_usernames: StrSet | None = None
    group_name: str | None = None
    tags: StrSet | None = None
    labels: StrSet | None = None
    states: list[TaskState] | None = None
    exit_status: Comparison | None = None
    priority: Comparison | None = None
    reporter_uuid: UUID | None = None

    @model_validator(mode="after")
    def _no_empty_filters(self) -> "TaskFilter":
        for name in ("creator_usernames", "tags", "labels", "states"):
            value = getattr(self, name)
            if value is not None and not value:
                raise ValueError(f"{name} cannot be empty if specified")
        return self


class TasksQueryReq(TaskFilter):
    limit: Size | None = None
    offset: Size | None = None
    count: Flag = False


class TaskInfo(Response):
    """``TaskQueryInfo`` / ``ParsedTaskQueryInfo``: one task, active or archived."""

    uuid: UUID
    creator_username: str
    group_name: str
    task_id: int
    tags: list[str]
    labels: list[str]
    created_at: Timestamp
    updated_at: Timestamp
    state: TaskState
    timeout: int = Field(description="seconds")
    priority: int
    spec: TaskSpec
    result: TaskResultSpec | None = None
    upstream_task_uuid: UUID | None = None
    downstream_task_uuid: UUID | None = None
    reporter_uuid: UUID | None = None
    attempts: int = 0
    max_attempts: int = 3
    exec_state: TaskExecState | None = None
    cancel_requested: bool = False
    started_at: Timestamp | None = Field(None, description="when a worker took the current attempt")
    ended_at: Timestamp | None = Field(None, description="when the task became Finished or Cancelled")
    usage: TaskUsage | None = Field(None, description="what its committed run cost, where its worker measured it")
    cached_from: UUID | None = Field(None, description="a cache hit: the run whose artifacts it has (no worker ran it)")


class ArtifactInfo(Response):
    content_type: ArtifactContentType
    size: int
    created_at: Timestamp
    updated_at: Timestamp


class TaskQueryResp(Response):
    info: TaskInfo
    artifacts: list[ArtifactInfo]


class TasksQueryResp(Response):
    count: int
    tasks: list[TaskInfo]
    group_name: str


class TasksCancelReq(TaskFilter):
    pass


class TasksCancelResp(Response):
    cancelled_count: int
    group_name: str


class UuidsReq(Request):
    uuids: Annotated[list[UUID], BeforeValidator(_dedupe)] = Field(min_length=1)


class CancelListResp(Response):
    cancelled_count: int
    failed_uuids: list[UUID]


MAX_BATCH_TASKS = 10_000
"""The most tasks one batch submit takes (400 past it); the SDK splits larger batches."""


def _within_batch_bound(tasks: Any) -> Any:
    """Counted before any item is validated: an oversized batch costs nothing to refuse."""
    if isinstance(tasks, list) and len(tasks) > MAX_BATCH_TASKS:
        raise ValueError(f"a batch takes at most {MAX_BATCH_TASKS} tasks, not {len(tasks)}: split it (the SDK does)")
    return tasks


class BatchSubmitReq(Request):
    tasks: Annotated[list[SubmitTaskReq], BeforeValidator(_within_batch_bound)] = Field(min_length=1, max_length=MAX_BATCH_TASKS)


class BatchSubmitItem(Response):
    Ok: SubmitTaskResp | None = None
    Err: ErrorMsg | None = None


class BatchSubmitResp(Response):
    results: list[BatchSubmitItem]


class UploadArtifactReq(Request):
    content_type: ArtifactContentType
    content_length: Size


class ArtifactsFilterReq(TaskFilter):
    content_type: ArtifactContentType


class ArtifactsListReq(UuidsReq):
    content_type: ArtifactContentType


class ArtifactDownloadItem(DownloadResp):
    uuid: UUID


class ArtifactsDownloadResp(Response):
    downloads: list[ArtifactDownloadItem]


class DeleteArtifactsResp(Response):
    deleted_count: int


class DeleteArtifactsListResp(DeleteArtifactsResp):
    failed_uuids: list[UUID]


# --- tasks as columns -----------------------------------------------------------------------------

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""The media type of ``POST /tasks/query/columns``'s answer: an Arrow IPC stream."""


@functools.cache
def task_columns_schema() -> pa.Schema:
    """``POST /tasks/query/columns`` answers the tasks that ``POST /tasks/query`` lists (same body,
    same order) as an Arrow IPC stream of record batches with these columns, those of the SDK's
    DataFrame of tasks: ``state`` and ``exec_state`` are dictionaries over every state name, in
    their order; ``command`` is the task's args as one shell-quoted line; ``exit_status`` and
    ``msg`` are its result, null until it has one; ``worker`` is the uuid of the worker that
    reported it; ``duration`` is ``ended_at - started_at``; ``cpu_s``, ``max_rss`` (bytes),
    ``cpu_efficiency`` and ``gpu_max_memory`` (bytes) are what the run cost (``TaskUsage``), null
    where its worker did not measure it; ``cached_from`` is, for a cache hit, the run whose
    artifacts it has."""
    import pyarrow as pa  # the listings need it; the worker and the CLI do not import it

    text, moment, span = pa.string(), pa.timestamp("us", tz="UTC"), pa.duration("us")
    return pa.schema([
        ("uuid", text), ("task_id", pa.int64()), ("group", text), ("creator", text),
        ("state", pa.dictionary(pa.int8(), text, ordered=True)), ("exec_state", pa.dictionary(pa.int8(), text)),
        ("command", text), ("tags", pa.list_(text)), ("labels", pa.list_(text)), ("priority", pa.int64()),
        ("timeout", span), ("attempts", pa.int64()), ("exit_status", pa.int64()), ("msg", text),
        ("created_at", moment), ("updated_at", moment), ("started_at", moment), ("ended_at", moment), ("duration", span),
        ("worker", text), ("upstream", text), ("downstream", text),
        ("cpu_s", pa.float64()), ("max_rss", pa.int64()), ("cpu_efficiency", pa.float64()), ("gpu_max_memory", pa.int64()),
        ("cached_from", text),
    ])


# --- campaign alerts -----------------------------------------------------------------------------

RERUN_PREFIX = "mito-rerun-of:"
"""The label a rerun carries: the uuid of the run it replaces (``client.rerun``). An alert counts
only the newest run of each: a failed run replaced by a rerun no longer counts as failed."""


class AlertEvent(_LenientEnum):
    done = "done"  # every run carrying the label has ended
    failures = "failures"  # the runs that failed reach the alert's threshold


ALERT_SIGNATURE_HEADER = "X-Mito-Signature"
ALERT_TIMESTAMP_HEADER = "X-Mito-Timestamp"
ALERT_URL_MAX = 2048


def alert_signature(secret: str, timestamp: str, body: bytes) -> str:
    """What a webhook POST carries in ``X-Mito-Signature``: ``sha256=`` and the hex HMAC-SHA256,
    keyed with the alert's secret, of ``<X-Mito-Timestamp>.<body>`` (the timestamp is signed too,
    so a captured request cannot be replayed later with a new one)."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _webhook_url(url: str) -> str:
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"a webhook URL is http:// or https:// with a host, not {url!r}")
    if any(ord(ch) < 33 for ch in url):
        raise ValueError("a webhook URL has no spaces or control characters")
    return url


WebhookUrl = Annotated[str, Field(max_length=ALERT_URL_MAX), AfterValidator(_webhook_url)]


class CreateAlertReq(Request):
    """``POST /alerts``: notify ``url`` when the runs labelled ``label`` in the group are all done,
    and/or when their failures reach ``failures`` runs or ``failure_share`` of the runs."""

    group_name: Name | None = Field(default=None, description="defaults to the caller's own group")
    label: str = Field(min_length=1, max_length=255)
    url: WebhookUrl
    secret: str = Field(min_length=16, max_length=1024, description="the HMAC key of X-Mito-Signature; never shown again")
    on: Annotated[list[AlertEvent], BeforeValidator(_dedupe)] = Field(default=[AlertEvent.done], min_length=1)
    failures: Annotated[int, Strict()] | None = Field(None, ge=1, le=INT32_MAX, description="failed runs that fire 'failures'")
    failure_share: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="share of the runs failed that fires 'failures'")

    @model_validator(mode="after")
    def _threshold_with_failures(self) -> "CreateAlertReq":
        thresholds = (self.failures is not None) + (self.failure_share is not None)
        if AlertEvent.failures in self.on and thresholds != 1:
            raise ValueError("on 'failures' takes one threshold: failures (a count) or failure_share (0 to 1)")
        if AlertEvent.failures not in self.on and thresholds:
            raise ValueError("a failures threshold needs 'failures' among the events (on)")
        return self


class AlertCounts(Response):
    """The runs of an alert's label (the newest attempt of each), by where they stand."""

    runs: int = 0
    succeeded: int = 0
    failed: int = Field(0, description="ended with a non-zero exit status, or cancelled")
    running: int = Field(0, description="held by a worker")
    waiting: int = Field(0, description="Ready or Pending")


class AlertInfo(Response):
    id: int
    group_name: str
    label: str
    on: list[AlertEvent]
    failures: int | None = None
    failure_share: float | None = None
    url: str = Field(description="in full for its creator; scheme, host and port for the others")
    secret_hint: str = Field(description="the secret's last characters")
    creator_username: str
    created_at: Timestamp
    active: bool = Field(description="its creator still has Write in the group: it fires")
    fired_at: Timestamp | None = None
    last_event: AlertEvent | None = None
    delivery: str | None = Field(None, description="how its last webhook POST went")


class AlertsResp(Response):
    group_name: str
    alerts: list[AlertInfo]


class AlertPayload(Response):
    """The JSON body of a webhook POST."""

    event: AlertEvent
    alert: int
    group: str
    label: str
    counts: AlertCounts
    failures: int | None = None
    failure_share: float | None = None
    at: Timestamp
    text: str = Field(description="the same in one line, for chat webhooks that show a 'text' field")


# --- workers ------------------------------------------------------------------------------------


class RegisterWorkerReq(Request):
    tags: StrSet = []
    labels: StrSet = []
    groups: list[str] = Field(default=[], description='"name" or "name:role"; role defaults to Write')
    lifetime: WireDuration | None = None
    heartbeat_interval: Annotated[WireDuration, Field(gt=timedelta(0))] | None = Field(
        default=None, exclude_if=lambda value: value is None,  # unsaid, not sent: an earlier release refuses the field
        description="how often the worker heartbeats (mito_lab): a worker silent for a few of its intervals, or for the "
        "heartbeat timeout if that is shorter, is removed and its tasks re-queued; absent, the heartbeat timeout alone",
    )


class RegisterWorkerResp(Response):
    worker_id: UUID
    token: str
    redis_url: str | None = None
    # mito_lab: durations from the moment of this answer, so that a worker times them on its own
    # monotonic clock, whatever its wall clock says (a coordinator of the reference sends neither)
    lifetime: WireDuration | None = Field(default=None, description="how long the worker's token is valid from now")
    heartbeat_timeout: WireDuration | None = Field(
        default=None, description="a worker that does not heartbeat for this long is removed and its tasks re-queued"
    )
    keeps_usage: bool = Field(default=False, description="the coordinator keeps what each run cost: send TaskResultSpec.usage")
    exchanges_logs: bool = Field(default=False, description="the coordinator takes live output (Log ops) in the reports of /workers/exchange")


class WorkerInfo(Response):
    """``WorkerQueryInfo``."""

    worker_id: UUID
    creator_username: str
    tags: list[str]
    labels: list[str]
    created_at: Timestamp
    updated_at: Timestamp
    state: WorkerState
    last_heartbeat: Timestamp
    assigned_task_id: UUID | None = None


class WorkerQueryResp(Response):
    info: WorkerInfo
    groups: dict[str, Role]


HEARTBEATS_PER_TIMEOUT = 3
"""A worker heartbeats at least this often within the coordinator's heartbeat timeout."""


# --- why a task waits (mito_lab) ----------------------------------------------------------------


class WorkerFit(_LenientEnum):
    """Whether a worker linked to a task's group could take the task now, by the dispatch rules."""

    Idle = "Idle"  # it takes the task at its next request, unless tasks ahead go first
    Busy = "Busy"  # it holds tasks already; it takes this one once its slots free up
    MissingTags = "MissingTags"  # it lacks some of the task's tags: it never takes it
    ReadOnly = "ReadOnly"  # the group's role on it is Read: it never takes the group's tasks
    Offline = "Offline"  # no heartbeat for a while: it may be gone
    ShuttingDown = "ShuttingDown"  # it finishes what it holds and takes nothing new


class HeldTask(Response):
    uuid: UUID
    started_at: Timestamp | None = None


class WorkerVerdict(Response):
    worker_id: UUID
    creator_username: str
    fit: WorkerFit
    reason: str
    missing_tags: list[str] = []
    holding: list[HeldTask] = []
    last_heartbeat: Timestamp


class Dependency(Response):
    """A task this one waits for: its ``upstream`` (it becomes Ready once that one commits), or the
    task its spec ``watch``es (its worker waits until that one reaches ``wanted``)."""

    kind: Literal["upstream", "watch"]
    uuid: UUID
    state: TaskState | None = Field(None, description="None: no such task, or not visible to you")
    exec_state: TaskExecState | None = None
    wanted: TaskExecState | None = None


class TaskWhyResp(Response):
    """``GET /tasks/{uuid}/why``: why a task is where it is, from the coordinator's own rules."""

    uuid: UUID
    state: TaskState
    summary: str = Field(description="the answer in one line")
    ahead: int | None = Field(None, description="Ready tasks of the group dispatched before it (higher priority, or older)")
    waiting_for: list[Dependency] = []
    workers: list[WorkerVerdict] = Field([], description="every worker linked to the task's group")


class WorkerFilter(Request):
    group_name: str | None = None
    role: list[Role] | None = None
    tags: StrSet | None = None
    labels: StrSet | None = None
    creator_username: str | None = None


class WorkersQueryReq(WorkerFilter):
    count: Flag = False


class WorkersQueryResp(Response):
    count: int
    workers: list[WorkerInfo]
    group_name: str


class UpdateWorkerGroupsReq(Request):
    relations: dict[str, Role] = Field(min_length=1)


class RemoveWorkerGroupsReq(Request):
    groups: StrSet = Field(min_length=1)


class WorkersShutdownReq(WorkerFilter):
    op: WorkerShutdownOp


class WorkersShutdownResp(Response):
    shutdown_count: int
    group_name: str


class WorkersShutdownListReq(UuidsReq):
    op: WorkerShutdownOp


class WorkersShutdownListResp(Response):
    shutdown_count: int
    failed_uuids: list[UUID]


MAX_WAIT_SECONDS = 600
"""The longest long poll (``?wait=SECONDS``: fetch, heartbeat, watch, logs) the coordinator accepts."""


class WorkerTaskResp(Response):
    id: int
    uuid: UUID
    timeout: WireDuration
    upstream_task_uuid: UUID | None = None
    spec: TaskSpec


class SubmitOp(Request):
    Submit: SubmitTaskReq


class CommitOp(Request):
    Commit: TaskResultSpec


class UploadOp(Request):
    Upload: UploadArtifactReq


LIVE_LOG_CHUNK = 64 * 1024
"""The most bytes of one stream a worker ships per report while a task runs."""

LogStream = Literal["stdout", "stderr"]


class LogChunk(Request):
    stream: LogStream
    offset: Size = Field(description="byte offset of this chunk in the task's stream")
    length: Annotated[int, Strict()] = Field(ge=0, le=LIVE_LOG_CHUNK, description="bytes of the stream it covers")
    data: str = Field(max_length=LIVE_LOG_CHUNK, description="those bytes, decoded as UTF-8")


class LogOp(Request):
    """mito_lab: a piece of the running task's stdout or stderr, for live following."""

    Log: LogChunk


class ExecStateOp(Request):
    """mito_lab: the worker reports each TaskExecState; the coordinator records and publishes it."""

    ExecState: TaskExecState


class ExecStatesOp(Request):
    """mito_lab: several TaskExecStates at once, in the order they were reached (each is recorded
    and published as if reported alone): a fast task's states cost one request, not six."""

    ExecStates: list[TaskExecState] = Field(min_length=1, max_length=len(TaskExecState))


ReportOp = Union[Literal["Finish", "Cancel"], SubmitOp, CommitOp, UploadOp, ExecStateOp, ExecStatesOp, LogOp]


class ReportTaskReq(Request):
    id: Int32
    op: ReportOp


class ReportTaskResp(Response):
    url: str | None = None


class WorkerSignal(Response):
    """Answer to a long-polling heartbeat (``POST /workers/heartbeat?wait=S``): the tasks of this
    worker that users cancelled, or that the coordinator took back (the worker lost its grant), to
    be killed now. A plain heartbeat answers ``null``."""

    cancel: list[UUID] = []


class WatchResp(Response):
    """``GET /workers/tasks/{uuid}/reaches/{state}``: has the task reached the state, and can it
    still (an ended task that has not reached it never will)."""

    reached: bool
    possible: bool


# --- the worker protocol, version 2 -------------------------------------------------------------

MAX_EXCHANGE_TASKS = 256
"""The most tasks one exchange reports on, and the most a worker may ask for at once."""

ExchangeOp = Union[Literal["Finish", "Cancel", "Release"], CommitOp, ExecStateOp, ExecStatesOp, LogOp]


class TaskReport(Request):
    """What became of one of the worker's tasks since its last exchange, in the order it happened:
    the reference's report ops ``Finish``, ``Cancel``, ``ExecState(s)``, ``Commit`` and ``Log``,
    plus ``Release`` (hand back a task the worker took but will not start; its attempt does not
    count)."""

    id: Int32
    ops: list[ExchangeOp] = Field(min_length=1, max_length=2 * len(TaskExecState))


class ExchangeReq(Request):
    """``POST /workers/exchange``: one request reports on any number of the worker's tasks and
    takes new ones. Uploads and downstream submissions keep their own report route
    (``POST /workers/tasks``)."""

    reports: list[TaskReport] = Field(default=[], max_length=MAX_EXCHANGE_TASKS)
    want: Annotated[int, Strict()] = Field(
        default=0, ge=0, le=MAX_EXCHANGE_TASKS,
        description="how many more tasks the worker can take now; the coordinator hands out at most "
        "this many, fewer while other workers wait or the queue is short",
    )
    holding: list[Int32] | None = Field(
        default=None, max_length=4 * MAX_EXCHANGE_TASKS,
        description="the ids of every task the worker holds, sent after an exchange whose answer may "
        "have been lost: tasks assigned to it that it never received are handed over again",
    )


class ReportRefusal(Response):
    """A task report that was not applied (the task is no longer the worker's, or the op does not
    fit its state); the other reports of the exchange were."""

    id: int
    status: int
    msg: str


class ExchangeResp(Response):
    tasks: list[WorkerTaskResp] = []
    refused: list[ReportRefusal] = []


class TaskLogResp(Response):
    """``GET /tasks/{uuid}/logs``: output of a task from ``offset`` on; ask again from ``next``.
    ``offset`` may be past what was asked when older output was dropped (only the newest
    megabyte of each stream is kept while a task runs, and for an hour after it ends)."""

    stream: LogStream
    offset: int
    next: int
    data: str
    complete: bool = Field(description="the task has ended and this is the end of its output")
    kept: bool | None = Field(None, description="the live output is still kept (the task runs, or ended within the hour): "
                              "if none came, the task printed none (mito_lab; None from earlier coordinators)")
