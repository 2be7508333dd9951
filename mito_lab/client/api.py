"""The asynchronous SDK: one typed method per API operation, DataFrames for listings, waits and
live output driven by the event stream. The CLI, the worker's login, the synchronous ``Client`` and
the notebook front end all call these rather than speaking HTTP themselves."""

from __future__ import annotations

import asyncio
import tempfile
import uuid as uuid_module
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from mito_lab.client.credentials import Credentials
from mito_lab.client.events import Event, EventStream, Listener
from mito_lab.client.http import HttpSession, MitoError
from mito_lab.client.progress import ShowProgress, progress_bar
from mito_lab.client.unpack import extract
from mito_lab.client.views import AlertView, Explanation
from mito_lab.config import cache_dir, parse_duration
from mito_lab.wire import (
    MAX_BATCH_TASKS,
    RERUN_PREFIX,
    AdminChangePasswordReq,
    AlertEvent,
    AlertsResp,
    ArtifactContentType,
    ArtifactsDownloadResp,
    ArtifactsFilterReq,
    ArtifactsListReq,
    AttachmentKeysReq,
    AttachmentMetadata,
    AttachmentQueryInfo,
    AttachmentsDownloadResp,
    AttachmentsQueryReq,
    AttachmentsQueryResp,
    BatchSubmitItem,
    BatchSubmitReq,
    BatchSubmitResp,
    CancelListResp,
    ChangePasswordReq,
    ChangeTaskReq,
    ChangeUserStateReq,
    CreateAlertReq,
    CreateGroupReq,
    CreateUserReq,
    DeleteArtifactsListResp,
    DeleteArtifactsResp,
    DeleteAttachmentsListResp,
    DeleteAttachmentsResp,
    DownloadResp,
    GroupQueryInfo,
    GroupQuotaReq,
    GroupQuotaResp,
    LoginReq,
    LoginResp,
    RemoteResourceDownload,
    RemoveGroupMembersReq,
    RemoveWorkerGroupsReq,
    Role,
    ShutdownReq,
    StorageQuotaReq,
    StorageQuotaResp,
    SubmitTaskReq,
    SubmitTaskResp,
    TaskExecState,
    TaskFilter,
    TaskInfo,
    TaskLogResp,
    TaskQueryResp,
    TasksCancelReq,
    TasksCancelResp,
    TaskSpec,
    TasksQueryReq,
    TasksQueryResp,
    TaskState,
    UpdateGroupMembersReq,
    UpdateLabelsReq,
    UpdateTagsReq,
    UpdateWorkerGroupsReq,
    UploadArtifactReq,
    UploadAttachmentReq,
    UploadResp,
    UserGroupsResp,
    UserState,
    UserStateResp,
    UuidsReq,
    WorkerQueryResp,
    WorkersQueryReq,
    WorkersQueryResp,
    WorkersShutdownListReq,
    WorkersShutdownListResp,
    WorkersShutdownReq,
    WorkersShutdownResp,
    md5_password,
)

if TYPE_CHECKING:  # pandas and pyarrow are imported by the listings that return them, not by the CLI and workers
    import pandas as pd
    import pyarrow as pa

RowT = TypeVar("RowT")
DEFAULT_COORDINATOR = "http://127.0.0.1:5000"
FOLLOW_POLL_SECONDS = 60.0
# Listings are read this many rows at a time (offset paging; rows seen twice are dropped).
PAGE_SIZE = 5000
# A wait re-reads the task this often even without events (a dropped stream must not hang it).
WAIT_RECHECK_SECONDS = 30.0
NO_OUTPUT_KEPT = "(no output kept: the task ended over an hour ago without --terminal)"
AskCredentials = Callable[[str | None], tuple[str, str]]


class NoCredentials(MitoError):
    def __init__(self) -> None:
        super().__init__(401, "not logged in: give a username and password (-u/-p)")


async def login_token(
    session: HttpSession,
    credentials: Credentials,
    user: str | None = None,
    password: str | None = None,
    retain: bool = True,
    ask: AskCredentials | None = None,
    save: bool = True,
) -> tuple[str, str]:
    """A valid user token, as the reference client finds one (6.4): the saved line of ``user`` (or the
    first line) if ``GET /auth`` accepts it; otherwise log in with the given or asked-for password
    and save the new token (unless not ``save``). Returns ``(username, token)``."""
    saved = credentials.find(user)
    if saved is not None:
        probe = HttpSession(session.base_url, saved[1], timeout=session.timeout)
        try:
            if await probe.call("GET", "auth") == saved[0]:
                return saved
        except MitoError as exc:
            if exc.status == 404:
                raise _not_a_coordinator(session, "auth") from None
            if exc.status == 0 or exc.status >= 500:
                raise
        finally:
            probe.close()
    if password is None:
        if ask is None:
            raise NoCredentials()
        user, password = ask(user)
    if not user:
        raise NoCredentials()
    try:
        answer: LoginResp = await session.call("POST", "login", LoginReq(username=user, password=password, retain=retain), LoginResp)
    except MitoError as exc:
        if exc.status == 404:
            raise _not_a_coordinator(session, "login") from None
        raise
    if save:
        credentials.save(user, answer.token)
    return user, answer.token


def _not_a_coordinator(session: HttpSession, path: str) -> MitoError:
    url = session.base_url.rstrip("/")
    return MitoError(404, f"{url}/{path} answered 404 Not Found: is {url} the coordinator's address (http://HOST:PORT)?")


def task_request(
    command: list[str] | TaskSpec,
    *,
    group: str | None = None,
    tags: Iterable[str] = (),
    labels: Iterable[str] = (),
    timeout: str | timedelta = "10min",
    priority: int = 0,
    envs: Mapping[str, str] | None = None,
    terminal: bool = False,
    resources: Iterable[RemoteResourceDownload] = (),
    watch: tuple[uuid_module.UUID, TaskExecState] | None = None,
    max_attempts: int = 3,
    cache: bool = False,
    force: bool = False,
) -> SubmitTaskReq:
    """Build a submit request from friendly arguments (validated like any request). ``cache``:
    answered at once by the group's newest successful run of the same command, environment and
    resource contents, if there is one (a cache hit, Finished with that run's artifacts; its
    ``cached_from`` names the run); ``force``: run anyway, and be the run later lookups find."""
    spec = command if isinstance(command, TaskSpec) else TaskSpec(
        args=list(command), envs=dict(envs or {}), resources=list(resources), terminal_output=terminal, watch=watch
    )
    return SubmitTaskReq(
        group_name=group,
        tags=list(tags),
        labels=list(labels),
        timeout=parse_duration(timeout),
        priority=priority,
        task_spec=spec,
        max_attempts=max_attempts,
        cache=cache,
        force=force,
    )


def changed_timeout(seconds: int, change: str | timedelta | None) -> timedelta:
    """A rerun's timeout: the old one (``None``), scaled (``"x2"``, ``"x0.5"``) or a new duration."""
    if change is None:
        return timedelta(seconds=seconds)
    if isinstance(change, str) and change.strip()[:1] in ("x", "×"):
        try:
            factor = float(change.strip()[1:])
        except ValueError:
            factor = 0.0
        if not 0 < factor < float("inf"):
            raise ValueError(f"timeout {change!r}: a factor is written x2, x1.5, x0.5")
        return timedelta(seconds=max(1, round(seconds * factor)))
    return parse_duration(change)


def rerun_request(
    info: TaskInfo, *, timeout: str | timedelta | None = None, tags: Iterable[str] | None = None, priority: int | None = None,
    labels: Iterable[str] = (), envs: Mapping[str, str] | None = None, max_attempts: int | None = None,
) -> SubmitTaskReq:
    """A new run of the task ``info`` with changed limits or placement (``None``: as it was;
    ``envs`` are added to its own), labelled with the uuid of the run it replaces."""
    spec = info.spec if not envs else info.spec.model_copy(update={"envs": {**info.spec.envs, **envs}})
    return SubmitTaskReq(
        group_name=info.group_name,
        tags=list(info.tags if tags is None else tags),
        labels=[*(label for label in info.labels if not label.startswith(RERUN_PREFIX)), *labels, RERUN_PREFIX + str(info.uuid)],
        timeout=changed_timeout(info.timeout, timeout),
        priority=info.priority if priority is None else priority,
        task_spec=spec,
        max_attempts=info.max_attempts if max_attempts is None else max_attempts,
    )


def alert_request(
    label: str, url: str, secret: str, *, on: Iterable[AlertEvent | str] | None = None, failures: int | float | str | None = None,
    group: str | None = None,
) -> CreateAlertReq:
    """A campaign alert from friendly arguments: ``failures`` is a count of failed runs (``3``),
    or a share of the runs (``0.2``, ``"20%"``); ``on`` defaults to ``done``, and ``failures``
    when a threshold is given."""
    count: int | None = None
    share: float | None = None
    number: float | None = None
    if isinstance(failures, bool):
        raise ValueError("failures: give a number of runs (3) or a share of them (0.2, '20%'), not True or False")
    try:
        if isinstance(failures, str) and failures.strip().endswith("%"):
            share = float(failures.strip()[:-1]) / 100
        elif failures is not None:
            number = float(failures)
    except ValueError:
        raise ValueError(f"failures {failures!r}: give a number of runs (3) or a share of them (0.2, 20%)") from None
    if number is not None and number < 1:
        share = number
    elif number is not None:
        if not number.is_integer():
            raise ValueError(f"failures {failures!r}: a number of runs is whole (3), a share is below 1 (0.2)")
        count = int(number)
    events = list(on) if on is not None else [AlertEvent.done, *([AlertEvent.failures] if failures is not None else [])]
    return CreateAlertReq(group_name=group, label=label, url=url, secret=secret, on=events, failures=count, failure_share=share)


Submittable = SubmitTaskReq | list[str] | str  # a request, an argument list, or a script for ``bash -c``


def as_request(command: Submittable, **options: Any) -> SubmitTaskReq:
    """What ``submit`` takes, as a request: a request as it is (it carries its own options), a
    command with the options of :func:`task_request`."""
    if isinstance(command, SubmitTaskReq):
        if options:
            raise TypeError(f"submit: options {sorted(options)} go in the request itself when you pass a SubmitTaskReq")
        return command
    return task_request(["bash", "-c", command] if isinstance(command, str) else command, **options)


def ending(info: TaskInfo) -> str:
    """How an ended task ended, in words: ``it ended Finished with exit status 0 (...)``."""
    assert info.result is not None
    reason = f", {info.result.msg.value}" if info.result.msg else ""
    hint = " (a task's result is what it leaves in $MITO_RESULT_DIR)" if info.state == TaskState.Finished else ""
    return f"it ended {info.state.value} with exit status {info.result.exit_status}{reason}{hint}"


async def every_page(
    read: Callable[[int, int], Awaitable[list[RowT]]], key: Callable[[RowT], Hashable], limit: int | None = None
) -> list[RowT]:
    """Every row of a paged listing (``read(offset, size)``), ``PAGE_SIZE`` at a time, each once:
    with offset paging, a row added meanwhile shifts the others, and a row read twice is dropped."""
    found: dict[Hashable, RowT] = {}
    while limit is None or len(found) < limit:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(found))
        page = await read(len(found), size)
        for row in page:
            found.setdefault(key(row), row)
        if len(page) < size:
            break
    return list(found.values())


class AsyncClient:
    """A logged-in connection to a coordinator."""

    def __init__(
        self, coordinator: str = DEFAULT_COORDINATOR, token: str | None = None, username: str | None = None, credentials: Credentials | None = None,
    ) -> None:
        self.session = HttpSession(coordinator, token)
        self.username = username
        self.credentials = credentials  # where ``login`` keeps its token (the file the session came from)
        self._events: EventStream | None = None

    @property
    def coordinator(self) -> str:
        return self.session.base_url.rstrip("/")

    @classmethod
    async def connect(
        cls,
        coordinator: str = DEFAULT_COORDINATOR,
        user: str | None = None,
        password: str | None = None,
        credential_path: Path | None = None,
        retain: bool = True,
        ask: AskCredentials | None = None,
    ) -> "AsyncClient":
        client = cls(coordinator, credentials=Credentials(credential_path))
        try:
            client.username, client.session.token = await login_token(client.session, client.credentials, user, password, retain, ask)
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        """Close at once; ``aclose`` also closes the event stream cleanly."""
        if self._events is not None:
            self._events.close()
        self.session.close()

    async def aclose(self) -> None:
        if self._events is not None:
            await self._events.aclose()
        self.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- users and groups -----------------------------------------------------------------------

    async def whoami(self) -> str:
        return await self.session.call("GET", "auth")

    async def create_user(self, username: str, password: str, admin: bool = False) -> None:
        await self.session.call("POST", "admin/users", CreateUserReq(username=username, password=password, admin=admin))

    async def create_group(self, name: str) -> None:
        await self.session.call("POST", "groups", CreateGroupReq(group_name=name))

    async def get_group(self, name: str) -> GroupQueryInfo:
        return await self.session.call("GET", f"groups/{name}", None, GroupQueryInfo)

    async def my_groups(self) -> dict[str, Role]:
        answer: UserGroupsResp = await self.session.call("GET", "users/groups", None, UserGroupsResp)
        return answer.groups

    async def update_members(self, group: str, relations: Mapping[str, Role | str]) -> None:
        await self.session.call("PUT", f"groups/{group}/users", UpdateGroupMembersReq(relations=dict(relations)))

    async def remove_members(self, group: str, users: Iterable[str]) -> None:
        await self.session.call("POST", f"groups/{group}/users/remove", RemoveGroupMembersReq(users=list(users)))

    async def shutdown_coordinator(self, secret: str) -> None:
        await self.session.call("POST", "admin/shutdown", ShutdownReq(secret=secret))

    # --- attachments ----------------------------------------------------------------------------

    async def attachment_meta(self, group: str, key: str) -> AttachmentMetadata:
        return await self.session.call("GET", f"groups/{group}/attachments/{quote(key)}", None, AttachmentMetadata)

    async def query_attachments(self, group: str, request: AttachmentsQueryReq) -> AttachmentsQueryResp:
        return await self.session.call("POST", f"groups/{group}/attachments/query", request, AttachmentsQueryResp)

    async def attachment_url(self, group: str, key: str) -> DownloadResp:
        return await self.session.call("GET", f"groups/{group}/download/attachments/{quote(key)}", None, DownloadResp)

    async def download_attachment(self, group: str, key: str, path: Path, progress: ShowProgress = None) -> Path:
        """Download an attachment to ``path``; a directory gets the key's last part as file name."""
        return await self._download(self.attachment_url(group, key), path, key.rsplit("/", 1)[-1], progress)

    async def upload_attachment(self, group: str, path: Path, key: str | None = None, progress: ShowProgress = None) -> UploadResp:
        """Upload a file as ``key`` (default: the file's name; a key ending in ``/`` gets it appended)."""
        key = key or path.name
        if key.endswith("/"):
            key += path.name
        async def recorded() -> int | None:
            try:
                return (await self.attachment_meta(group, key)).size
            except MitoError as exc:
                if exc.status == 404:  # not recorded: nothing whole arrived
                    return None
                raise

        return await self._upload(
            f"groups/{group}/attachments", lambda size: UploadAttachmentReq(key=key, content_length=size), path, progress, recorded
        )

    # --- campaign alerts ------------------------------------------------------------------------

    async def alert(
        self, label: str, url: str, secret: str, *, on: Iterable[AlertEvent | str] | None = None,
        failures: int | float | str | None = None, group: str | None = None,
    ) -> AlertView:
        """Have the coordinator POST to ``url`` when the runs labelled ``label`` in ``group``
        (default: your own) have all ended (``on="done"``), or when ``failures`` of them failed
        (a count, or a share such as ``0.2`` or ``"20%"``), signed with ``secret`` (see the
        README, Campaign alerts). A label whose runs have all ended already fires at once."""
        return await self.create_alert(alert_request(label, url, secret, on=on, failures=failures, group=group))

    async def create_alert(self, request: CreateAlertReq) -> AlertView:
        return await self.session.call("POST", "alerts", request, AlertView)

    async def query_alerts(self, group: str | None = None) -> AlertsResp:
        return await self.session.call("GET", "alerts", None, AlertsResp, query=f"?group={quote(group)}" if group else "")

    async def alerts(self, group: str | None = None) -> pd.DataFrame:
        """The campaign alerts of a group (default: your own), with what each one's last delivery came to."""
        from mito_lab.client.frames import alerts_frame

        return alerts_frame((await self.query_alerts(group)).alerts)

    async def remove_alert(self, alert_id: int) -> None:
        await self.session.call("DELETE", f"alerts/{int(alert_id)}")

    # --- workers --------------------------------------------------------------------------------

    async def get_worker(self, worker: uuid_module.UUID | str) -> WorkerQueryResp:
        return await self.session.call("GET", f"workers/{worker}", None, WorkerQueryResp)

    async def query_workers(self, request: WorkersQueryReq) -> WorkersQueryResp:
        return await self.session.call("POST", "workers/query", request, WorkersQueryResp)

    async def shutdown_worker(self, worker: uuid_module.UUID | str, force: bool = False) -> None:
        await self.session.call("DELETE", f"workers/{worker}", query=f"?op={'force' if force else 'graceful'}")

    async def update_worker_tags(self, worker: uuid_module.UUID | str, tags: Iterable[str]) -> None:
        await self.session.call("PUT", f"workers/{worker}/tags", UpdateTagsReq(tags=list(tags)))

    async def update_worker_labels(self, worker: uuid_module.UUID | str, labels: Iterable[str]) -> None:
        await self.session.call("PUT", f"workers/{worker}/labels", UpdateLabelsReq(labels=list(labels)))

    async def update_worker_roles(self, worker: uuid_module.UUID | str, relations: Mapping[str, Role | str]) -> None:
        await self.session.call("PUT", f"workers/{worker}/groups", UpdateWorkerGroupsReq(relations=dict(relations)))

    async def remove_worker_roles(self, worker: uuid_module.UUID | str, groups: Iterable[str]) -> None:
        await self.session.call("DELETE", f"workers/{worker}/groups/remove", RemoveWorkerGroupsReq(groups=list(groups)))

    # --- tasks ----------------------------------------------------------------------------------

    async def submit(self, command: Submittable, **options: Any) -> SubmitTaskResp:
        """Submit a task: a ready request, or a command (a list of arguments, or a string run by
        ``bash -c``) with the options of :func:`task_request` (group, tags, labels, timeout, ...)."""
        return await self.session.call("POST", "tasks", as_request(command, **options), SubmitTaskResp)

    async def get_task(self, task_uuid: uuid_module.UUID | str) -> TaskQueryResp:
        return await self.session.call("GET", f"tasks/{task_uuid}", None, TaskQueryResp)

    async def explain(self, task_uuid: uuid_module.UUID | str) -> Explanation:
        """Why the task is where it is: its place in its group's queue, what it waits for, and
        whether each worker of the group could take it (``GET /tasks/{uuid}/why``)."""
        return await self.session.call("GET", f"tasks/{task_uuid}/why", None, Explanation)

    async def query_tasks(self, request: TasksQueryReq) -> TasksQueryResp:
        return await self.session.call("POST", "tasks/query", request, TasksQueryResp)

    async def task_columns(self, request: TasksQueryReq) -> pa.Table:
        """The tasks ``query_tasks`` lists, as an Arrow table (``wire.task_columns_schema``), in one
        answer: ``POST /tasks/query/columns``."""
        import pyarrow as pa

        answer = await self.session.call_binary("POST", "tasks/query/columns", request)
        return pa.ipc.open_stream(pa.py_buffer(answer)).read_all()

    async def cancel_task(self, task_uuid: uuid_module.UUID | str) -> None:
        await self.session.call("DELETE", f"tasks/{task_uuid}")

    async def change_task(self, task_uuid: uuid_module.UUID | str, request: ChangeTaskReq) -> None:
        await self.session.call("PUT", f"tasks/{task_uuid}", request)

    async def update_task_labels(self, task_uuid: uuid_module.UUID | str, labels: Iterable[str]) -> None:
        await self.session.call("PUT", f"tasks/{task_uuid}/labels", UpdateLabelsReq(labels=list(labels)))

    # --- batches (reference 0.6) ----------------------------------------------------------------

    async def submit_many(self, commands: Iterable[Submittable], **options: Any) -> BatchSubmitResp:
        """Submit many tasks, each what ``submit`` takes (requests, argument lists, ``bash -c``
        strings; ``options`` apply to every command that is not a request), in order,
        MAX_BATCH_TASKS per request (the coordinator's bound); the results of every request in one answer."""
        pending = [as_request(command, **options) for command in commands]
        batches = [pending[start : start + MAX_BATCH_TASKS] for start in range(0, len(pending), MAX_BATCH_TASKS)] or [pending]
        results: list[BatchSubmitItem] = []
        for batch in batches:  # an empty one is refused by BatchSubmitReq, as ever
            results += (await self.session.call("POST", "tasks/submit", BatchSubmitReq(tasks=batch), BatchSubmitResp)).results
        return BatchSubmitResp(results=results)

    async def rerun(self, tasks: uuid_module.UUID | str | Iterable[uuid_module.UUID | str] | TaskFilter, **changes: Any) -> BatchSubmitResp:
        """Run tasks again, as new tasks that keep the link to the run they replace (the label
        ``mito-rerun-of:<uuid>``): the listed ones, or those a filter matches (e.g. the failed
        ones of a label: ``TasksQueryReq(labels=[...], exit_status="!=0")``). ``changes``: those of
        :func:`rerun_request` (``timeout="x2"``, ``tags=[...]``, ``priority``, ...)."""
        if isinstance(tasks, TaskFilter):
            infos = (await self.query_tasks(TasksQueryReq.model_validate(tasks.model_dump(exclude_unset=True)))).tasks
        else:
            listed = [tasks] if isinstance(tasks, uuid_module.UUID | str) else list(tasks)
            infos = [answer.info for answer in await asyncio.gather(*(self.get_task(task_uuid) for task_uuid in listed))]
        if not infos:
            raise MitoError(404, "no task to run again")
        return await self.submit_many([rerun_request(info, **changes) for info in infos])

    async def cancel_tasks(self, request: TasksCancelReq) -> TasksCancelResp:
        return await self.session.call("POST", "tasks/cancel", request, TasksCancelResp)

    async def cancel_task_list(self, uuids: Iterable[uuid_module.UUID | str]) -> CancelListResp:
        return await self.session.call("POST", "tasks/cancel/list", UuidsReq.model_validate({"uuids": list(uuids)}), CancelListResp)

    async def artifact_links(self, request: ArtifactsFilterReq | ArtifactsListReq) -> ArtifactsDownloadResp:
        """Links to one artifact type of the tasks matching a filter, or of listed tasks."""
        path = "tasks/download/artifacts/list" if isinstance(request, ArtifactsListReq) else "tasks/download/artifacts"
        return await self.session.call("POST", path, request, ArtifactsDownloadResp)

    async def delete_artifact(self, task_uuid: uuid_module.UUID | str, content_type: ArtifactContentType, admin: bool = False) -> None:
        await self.session.call("DELETE", f"{'admin/' if admin else ''}tasks/{task_uuid}/artifacts/{content_type.value}")

    async def delete_artifacts(self, request: ArtifactsFilterReq | ArtifactsListReq) -> DeleteArtifactsResp:
        if isinstance(request, ArtifactsListReq):
            return await self.session.call("POST", "tasks/delete/artifacts/list", request, DeleteArtifactsListResp)
        return await self.session.call("POST", "tasks/delete/artifacts", request, DeleteArtifactsResp)

    async def attachment_links(self, group: str, key: str | None = None, limit: int | None = None,
                               offset: int | None = None, keys: list[str] | None = None) -> AttachmentsDownloadResp:
        if keys is not None:
            return await self.session.call("POST", f"groups/{group}/download/attachments/list", AttachmentKeysReq(keys=keys), AttachmentsDownloadResp)
        request = AttachmentsQueryReq(key=key, limit=limit, offset=offset)
        return await self.session.call("POST", f"groups/{group}/download/attachments", request, AttachmentsDownloadResp)

    async def delete_attachment(self, group: str, key: str, admin: bool = False) -> None:
        await self.session.call("DELETE", f"{'admin/' if admin else ''}groups/{group}/attachments/{quote(key)}")

    async def delete_attachments(self, group: str, key: str | None = None, limit: int | None = None,
                                 offset: int | None = None, keys: list[str] | None = None) -> DeleteAttachmentsResp:
        if keys is not None:
            return await self.session.call("POST", f"groups/{group}/delete/attachments/list", AttachmentKeysReq(keys=keys), DeleteAttachmentsListResp)
        request = AttachmentsQueryReq(key=key, limit=limit, offset=offset)
        return await self.session.call("POST", f"groups/{group}/delete/attachments", request, DeleteAttachmentsResp)

    async def shutdown_workers(self, request: WorkersShutdownReq | WorkersShutdownListReq) -> Any:
        if isinstance(request, WorkersShutdownListReq):
            return await self.session.call("POST", "workers/shutdown/list", request, WorkersShutdownListResp)
        return await self.session.call("POST", "workers/shutdown", request, WorkersShutdownResp)

    async def download_links(self, links: Iterable[tuple[str, Path]], concurrency: int = 1, progress: ShowProgress = None) -> list[Path]:
        """Fetch several signed URLs, ``concurrency`` at a time (the bar counts files)."""
        gate = asyncio.Semaphore(max(1, concurrency))
        links = list(links)
        with progress_bar(progress, len(links), "download", unit="file") as advance:

            async def one(url: str, path: Path) -> Path:
                async with gate:
                    await self.session.download_file(url, path)
                if advance is not None:
                    advance(1)
                return path

            return list(await asyncio.gather(*(one(url, path) for url, path in links)))

    # --- accounts and administration -----------------------------------------------------------

    async def login(self, username: str, password: str, retain: bool = True) -> str:
        """Log in (again, or as another user); the new token is saved as the default user's
        when the session came from a credentials file, so later commands use it."""
        answer: LoginResp = await self.session.call("POST", "login", LoginReq(username=username, password=password, retain=retain), LoginResp)
        self.username, self.session.token = username, answer.token
        if self.credentials is not None:
            self.credentials.save(username, answer.token, default=True)
        return answer.token

    async def change_password(self, old: str, new: str) -> str:
        """Change your password; your other sessions end and this one continues with a new token."""
        request = ChangePasswordReq(old_md5_password=md5_password(old), new_md5_password=md5_password(new))
        answer: LoginResp = await self.session.call("POST", f"users/{self.username}/password", request, LoginResp)
        self.session.token = answer.token
        return answer.token

    async def admin_delete_user(self, username: str) -> UserStateResp:
        return await self.session.call("DELETE", f"admin/users/{username}", None, UserStateResp)

    async def admin_set_password(self, username: str, password: str) -> None:
        await self.session.call("POST", f"admin/users/{username}/password", AdminChangePasswordReq(new_md5_password=md5_password(password)))

    async def admin_set_state(self, username: str, state: UserState) -> UserStateResp:
        return await self.session.call("POST", f"admin/users/{username}/state", ChangeUserStateReq(state=state), UserStateResp)

    async def admin_group_quota(self, username: str, quota: str) -> GroupQuotaResp:
        return await self.session.call("POST", f"admin/users/{username}/group-quota", GroupQuotaReq(group_quota=quota), GroupQuotaResp)

    async def admin_storage_quota(self, group: str, quota: str) -> StorageQuotaResp:
        return await self.session.call("POST", f"admin/groups/{group}/storage-quota", StorageQuotaReq(storage_quota=quota), StorageQuotaResp)

    async def admin_shutdown_worker(self, worker: uuid_module.UUID | str, force: bool = False) -> None:
        await self.session.call("DELETE", f"admin/workers/{worker}", query=f"?op={'force' if force else 'graceful'}")

    # --- listings as DataFrames -----------------------------------------------------------------

    async def tasks(
        self,
        group: str | None = None,
        *,
        states: Iterable[TaskState | str] | None = None,
        tags: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
        creators: Iterable[str] | None = None,
        exit_status: str | int | None = None,
        priority: str | int | None = None,
        worker: uuid_module.UUID | str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """The tasks of a group (default: your own) matching every filter given, newest first, as a
        DataFrame (see ``frames.TASK_COLUMNS``); all of them unless ``limit`` is given.
        ``exit_status`` and ``priority`` take a number or a comparison such as ``">0"``. Read in one
        answer from the columnar route; from an earlier coordinator without it, page by page."""
        filters = TasksQueryReq(
            group_name=group,
            states=None if states is None else [TaskState(s) for s in states],
            tags=None if tags is None else list(tags),
            labels=None if labels is None else list(labels),
            creator_usernames=None if creators is None else list(creators),
            exit_status=None if exit_status is None else str(exit_status),
            priority=None if priority is None else str(priority),
            reporter_uuid=None if worker is None else uuid_module.UUID(str(worker)),
        )
        from mito_lab.client.frames import tasks_frame, tasks_frame_from_columns

        try:
            columns = await self.task_columns(filters.model_copy(update={"limit": limit}))
        except MitoError as exc:
            if exc.status not in (404, 405):
                raise
        else:
            return tasks_frame_from_columns(columns)

        # a coordinator of an earlier release, without the columnar route: page through the JSON one
        async def page(offset: int, size: int) -> list[TaskInfo]:
            return (await self.query_tasks(filters.model_copy(update={"limit": size, "offset": offset}))).tasks

        return tasks_frame(await every_page(page, lambda task: task.uuid, limit))

    async def workers(
        self,
        group: str | None = None,
        *,
        tags: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
        roles: Iterable[Role | str] | None = None,
        creator: str | None = None,
    ) -> pd.DataFrame:
        """The workers serving a group (default: your own) that match every filter, as a DataFrame."""
        from mito_lab.client.frames import workers_frame

        request = WorkersQueryReq(
            group_name=group,
            tags=None if tags is None else list(tags),
            labels=None if labels is None else list(labels),
            role=None if roles is None else [Role(r) for r in roles],
            creator_username=creator,
        )
        return workers_frame((await self.query_workers(request)).workers)

    async def attachments(self, group: str | None = None, key: str | None = None) -> pd.DataFrame:
        """The attachments of a group (default: your own) whose key contains ``key``."""
        from mito_lab.client.frames import attachments_frame

        group = group or self.username or ""

        async def page(offset: int, size: int) -> list[AttachmentQueryInfo]:
            return (await self.query_attachments(group, AttachmentsQueryReq(key=key, limit=size, offset=offset))).attachments

        return attachments_frame(await every_page(page, lambda attachment: attachment.key))

    async def groups(self) -> pd.DataFrame:
        """Your groups and your role in each."""
        from mito_lab.client.frames import groups_frame

        return groups_frame(await self.my_groups())

    # --- events and waiting ---------------------------------------------------------------------

    async def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with each event of your groups (see ``events.py``); returns the
        function that stops it. Every listener of this client shares one connection."""
        if self._events is None:
            self._events = EventStream(self.session)
        return await self._events.listen(listener)

    async def events(self) -> AsyncIterator[Event]:
        """The events of your groups as they happen (task and worker changes, output)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stop = await self.listen(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            stop()

    async def wait_task(
        self,
        task_uuid: uuid_module.UUID | str,
        timeout: float | None = None,
        on_change: Callable[[TaskInfo], None] | None = None,
    ) -> TaskInfo:
        """Wait until the task has ended and its outcome is committed; returns its final info.
        Driven by the event stream (with a slow re-read in case events were lost); ``on_change``
        sees each new state on the way. Raises ``TimeoutError`` after ``timeout`` seconds."""
        info = (await self.get_task(task_uuid)).info
        if info.result is not None:  # ended already: no need for the event stream
            if on_change is not None:
                on_change(info)
            return info
        mine = str(task_uuid)
        changed = asyncio.Event()
        stop = await self.listen(lambda event: changed.set() if event.get("uuid") == mine or event.get("kind") == "resync" else None)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        seen: tuple[Any, ...] | None = None
        try:
            while True:
                changed.clear()
                info = (await self.get_task(task_uuid)).info
                if on_change is not None and (info.state, info.exec_state) != seen:
                    seen = (info.state, info.exec_state)
                    on_change(info)
                if info.result is not None:
                    return info
                remaining = WAIT_RECHECK_SECONDS if deadline is None else deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"task {task_uuid} is still {info.state.value} after {timeout:g} s")
                try:
                    await asyncio.wait_for(changed.wait(), min(remaining, WAIT_RECHECK_SECONDS))
                except TimeoutError:
                    pass
        finally:
            stop()

    async def result(self, task_uuid: uuid_module.UUID | str, path: Path | None = None, progress: ShowProgress = None) -> Path:
        """The task's result directory: its result artifact downloaded and unpacked under ``path``
        (default: a per-task folder in the cache, reused when already there). Waits for the task."""
        info = await self.wait_task(task_uuid)
        target = Path(path) if path is not None else cache_dir() / "results" / str(info.uuid)
        unpacked = target / "result"
        if unpacked.is_dir():
            return unpacked
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as scratch:
            try:
                archive = await self.download_artifact(task_uuid, ArtifactContentType.result, Path(scratch), progress)
            except MitoError as exc:
                if exc.status == 404:
                    raise MitoError(404, f"task {task_uuid} has no result artifact: {ending(info)}") from None
                raise
            return extract(archive, target) / "result"

    # --- live output ----------------------------------------------------------------------------

    async def logs(self, task_uuid: uuid_module.UUID | str, stream: str = "stdout", offset: int = 0, wait: float = 0) -> TaskLogResp:
        """The task's output from ``offset`` on (long-polls up to ``wait`` seconds for some)."""
        return await self.session.call(
            "GET", f"tasks/{task_uuid}/logs", None, TaskLogResp,
            query=f"?stream={stream}&offset={offset}", wait=wait,
        )

    async def output(self, task_uuid: uuid_module.UUID | str, stream: str = "stdout") -> str:
        """A task's output so far: the live window while it runs and for an hour after, then the
        std-log artifact (tasks submitted with ``terminal`` keep one)."""
        answer = await self.logs(task_uuid, stream)
        if answer.data or not answer.complete or answer.kept:  # (kept and empty: it printed nothing there)
            return answer.data
        with tempfile.TemporaryDirectory() as scratch:
            try:
                archive = await self.download_artifact(task_uuid, ArtifactContentType.std_log, Path(scratch), progress=False)
            except MitoError as exc:
                if exc.status != 404:
                    raise
                return NO_OUTPUT_KEPT
            return (extract(archive, Path(scratch)) / "std-log" / f"{stream}.log").read_text(errors="replace")

    async def follow_logs(self, task_uuid: uuid_module.UUID | str, stream: str = "stdout") -> AsyncIterator[str]:
        """Yield the task's output as it is produced, until the task ends."""
        offset = 0
        while True:
            answer = await self.logs(task_uuid, stream, offset, wait=FOLLOW_POLL_SECONDS)
            if answer.data:
                yield answer.data
            offset = answer.next
            if answer.complete:
                return

    # --- artifacts ------------------------------------------------------------------------------

    async def artifact_url(self, task_uuid: uuid_module.UUID | str, content_type: ArtifactContentType) -> DownloadResp:
        return await self.session.call("GET", f"tasks/{task_uuid}/download/artifacts/{content_type.value}", None, DownloadResp)

    async def download_artifact(
        self,
        task_uuid: uuid_module.UUID | str,
        content_type: ArtifactContentType,
        path: Path,
        progress: ShowProgress = None,
    ) -> Path:
        """Download an artifact (a ``.tar.gz``) to ``path``; a directory gets ``<type>.tar.gz`` inside."""
        return await self._download(self.artifact_url(task_uuid, content_type), path, content_type.file_name, progress)

    async def upload_artifact(
        self,
        task_uuid: uuid_module.UUID | str,
        content_type: ArtifactContentType,
        path: Path,
        progress: ShowProgress = None,
    ) -> UploadResp:
        async def recorded() -> int | None:
            artifacts = (await self.get_task(task_uuid)).artifacts
            return next((a.size for a in artifacts if a.content_type == content_type), None)

        return await self._upload(
            f"tasks/{task_uuid}/artifacts", lambda size: UploadArtifactReq(content_type=content_type, content_length=size), path,
            progress, recorded,
        )

    async def _download(self, link: Awaitable[DownloadResp], path: Path, default_name: str, progress: ShowProgress) -> Path:
        """Fetch a signed URL into ``path`` (a directory gets ``default_name`` inside)."""
        if path.is_dir():
            path = path / default_name
        answer = await link
        with progress_bar(progress, answer.size, f"download {path.name}") as advance:
            await self.session.download_file(answer.url, path, advance)
        return path

    async def _upload(
        self, route: str, request: Callable[[int], BaseModel], path: Path, progress: ShowProgress,
        recorded: Callable[[], Awaitable[int | None]],
    ) -> UploadResp:
        """Ask ``route`` for a signed URL for the file's size, stream the file there, then read back
        what the coordinator recorded: it records an upload once it arrived whole, and reading it
        is how the SDK reports the upload complete."""
        if path.is_dir():
            raise MitoError(400, f"{path} is a directory: upload a file (pack it with tar first)")
        size = path.stat().st_size
        upload: UploadResp = await self.session.call("POST", route, request(size), UploadResp)
        with progress_bar(progress, size, f"upload {path.name}") as advance:
            await self.session.upload_file(upload.url, path, advance)
        if (found := await recorded()) != size:
            raise MitoError(409, f"the upload of {path} was not recorded ({found} bytes recorded of {size} sent): upload it again")
        return upload
