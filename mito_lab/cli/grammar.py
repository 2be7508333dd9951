"""The client command grammar, shared by ``mito client <cmd>``, the interactive prompt and the
``%mito`` magic. Parsing never exits the process: errors raise ``GrammarError`` and ``--help``
raises ``HelpShown`` with the text, so every front end decides how to show them."""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import sys
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from mito_lab.client.api import AsyncClient, alert_request, task_request
from mito_lab.client.unpack import extract
from mito_lab.config import parse_duration
from mito_lab.sweeps import Launched, launch, parse_value
from mito_lab.text import counted, size_text
from mito_lab.wire import (
    AlertEvent,
    ArtifactContentType,
    ArtifactRef,
    ArtifactsFilterReq,
    ArtifactsListReq,
    ArtifactSource,
    AttachmentRef,
    AttachmentSource,
    AttachmentsQueryReq,
    ChangeTaskReq,
    RemoteResourceDownload,
    Role,
    SubmitTaskReq,
    TaskExecState,
    TasksCancelReq,
    TaskSpec,
    TasksQueryReq,
    TaskState,
    UserState,
    WorkerShutdownOp,
    WorkersQueryReq,
    WorkersShutdownListReq,
    WorkersShutdownReq,
    describe_validation_error,
)

Command = Callable[[AsyncClient, argparse.Namespace], Awaitable[Any]]


class GrammarError(Exception):
    """A command line that does not parse; the message says what is wrong and shows the usage."""


class HelpShown(Exception):
    """``--help`` was asked for; the message is the help text."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a mistyped ``word`` most likely meant, if one is close enough (difflib)."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


class Parser(argparse.ArgumentParser):
    commands: argparse._SubParsersAction | None = None  # its sub-commands, for front ends that add their own

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """argparse's check of a choice, which also says which choice a typo most likely meant."""
        if action.choices is not None and value not in action.choices:
            guess = closest(str(value), (str(choice) for choice in action.choices))
            if guess is not None:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r} (did you mean {guess!r}?)")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        where = f"{self.prog.strip()}: " if self.prog.strip() else ""
        raise GrammarError(f"{self.format_usage().strip()}\n{where}error: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise HelpShown(message or "")

    def print_help(self, file: Any = None) -> None:
        raise HelpShown(self.format_help())


class CommandParser(Parser):
    """A command's parser: ``--json`` is also accepted after the command (``get tasks --json``).
    For ``manage task UUID <ACTION>`` and the like, ``manage task <ACTION> --help`` shows the
    action's help without a UUID (``actions``: the actions after the target)."""

    actions: argparse._SubParsersAction | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if self.actions is not None and words and words[0] in self.actions.choices and {"-h", "--help"} & set(words[1:]):
            self.actions.choices[words[0]].print_help()
        return super().parse_known_args(words, namespace)


class CommaList(argparse.Action):
    """``-t a,b c`` -> ``["a", "b", "c"]`` (as the reference's comma delimiter); repeated flags
    accumulate; ``convert`` turns each item into its value."""

    def __init__(self, *args: Any, convert: Callable[[str], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.convert = convert

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for value in values if isinstance(values, list) else [values]:
            for part in (part.strip() for part in value.split(",")):
                if not part:
                    continue
                try:
                    items.append(self.convert(part) if self.convert else part)
                except ValueError as exc:
                    parser.error(f"argument {option}: invalid value {part!r}: {exc}")
        setattr(namespace, self.dest, items)


def _argument_type(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {exc}") from None

    parse.__name__ = what
    return parse


def _content_type(text: str) -> ArtifactContentType:
    return ArtifactContentType(text)


def _task_state(text: str) -> TaskState:
    return TaskState(text)


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError("use KEY=VALUE")
    return key, value


def _watch(text: str) -> tuple[uuid_module.UUID, TaskExecState]:
    target, sep, state = text.partition(",")
    if not sep:
        raise ValueError("use UUID,STATE, e.g. 123e4567-e89b-12d3-a456-426614174000,ExecSpawned")
    return uuid_module.UUID(target.strip()), TaskExecState(state.strip())


def _resource(text: str) -> RemoteResourceDownload:
    """``artifact=UUID:TYPE:LOCAL_PATH`` or ``attachment=KEY:LOCAL_PATH``."""
    kind, sep, rest = text.partition("=")
    kind = kind.strip().lower()
    if kind == "artifact" and sep:
        task, _, rest = rest.partition(":")
        content_type, _, local = rest.partition(":")
        source: Any = ArtifactSource(Artifact=ArtifactRef(uuid=uuid_module.UUID(task), content_type=ArtifactContentType(content_type)))
    elif kind == "attachment" and sep:
        key, _, local = rest.rpartition(":")
        source = AttachmentSource(Attachment=AttachmentRef(key=key))
    else:
        raise ValueError("use artifact=UUID:TYPE:PATH or attachment=KEY:PATH")
    return RemoteResourceDownload(remote_file=source, local_path=local)


UUID_ARG = _argument_type(uuid_module.UUID, "UUID")
TYPE_ARG = _argument_type(_content_type, "artifact type (result, exec-log, std-log)")


# --- commands -------------------------------------------------------------------------------------


async def cmd_auth(client: AsyncClient, args: argparse.Namespace) -> str:
    return await client.whoami()


async def cmd_create_user(client: AsyncClient, args: argparse.Namespace) -> str:
    await client.create_user(args.username, args.password, args.admin)
    return f"Created user {args.username}"


async def cmd_create_group(client: AsyncClient, args: argparse.Namespace) -> str:
    await client.create_group(args.name)
    return f"Created group {args.name}"


async def cmd_submit(client: AsyncClient, args: argparse.Namespace) -> Any:
    if not args.command:
        raise GrammarError("submit: give the command to run after --, e.g. submit -- echo hello")
    try:
        request = task_request(
            args.command,
            group=args.group_name,
            tags=args.tags or [],
            labels=args.labels or [],
            timeout=args.timeout,
            priority=args.priority,
            envs=dict(args.envs or []),
            terminal=args.terminal,
            resources=args.resources or [],
            watch=args.watch,
            cache=args.cache,
            force=args.force,
        )
    except ValidationError as exc:
        raise GrammarError(f"submit: {describe_validation_error(exc)}") from None
    return await client.submit(request)


async def cmd_get_task(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.get_task(args.uuid)


async def cmd_get_tasks(client: AsyncClient, args: argparse.Namespace) -> Any:
    request = TasksQueryReq(
        creator_usernames=args.creators,
        group_name=args.group,
        tags=args.tags,
        labels=args.labels,
        states=args.states,
        exit_status=args.exit_status,
        priority=args.priority,
        reporter_uuid=args.reporter_uuid,
        limit=args.limit,
        offset=args.offset,
        count=args.count,
    )
    return await client.query_tasks(request)


async def cmd_get_artifact(client: AsyncClient, args: argparse.Namespace) -> Any:
    if args.no_download:
        return await client.artifact_url(args.uuid, args.content_type)
    target = Path(args.output) if args.output else Path(args.content_type.file_name)
    path = await client.download_artifact(args.uuid, args.content_type, target)
    if args.extract:
        return f"Unpacked {args.content_type.value} of task {args.uuid} into {extract(path, Path(args.extract))}"
    return f"Downloaded {args.content_type.value} of task {args.uuid} to {path}"


async def cmd_rerun(client: AsyncClient, args: argparse.Namespace) -> Any:
    changes = {name: value for name, value in (("timeout", args.timeout), ("tags", args.tags), ("priority", args.priority)) if value is not None}
    try:
        answer = await client.rerun(args.uuids, **changes)
    except ValueError as exc:
        raise GrammarError(f"rerun: {exc}") from None
    lines = [f"Submitted task {item.Ok.uuid} (#{item.Ok.task_id}) replacing {old}" if item.Ok else f"error: {old}: {item.Err.msg if item.Err else 'refused'}"
             for old, item in zip(args.uuids, answer.results, strict=True)]
    return "\n".join(lines)


async def cmd_why(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.explain(args.uuid)


async def cmd_get_logs(client: AsyncClient, args: argparse.Namespace) -> Any:
    """The output of a task; ``--follow`` streams it until the task ends."""
    stream = "stderr" if args.stderr else "stdout"
    if args.follow:
        return client.follow_logs(args.uuid, stream)
    return (await client.output(args.uuid, stream)).rstrip("\n") or f"(no output on {stream})"


def _group(client: AsyncClient, args: argparse.Namespace) -> str:
    """The group a command names, else the user's own (as the reference's client)."""
    return args.group or client.username or ""


async def cmd_get_attachment_meta(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.attachment_meta(_group(client, args), args.key)


async def cmd_get_attachments(client: AsyncClient, args: argparse.Namespace) -> Any:
    request = AttachmentsQueryReq(key=args.key, limit=args.limit, offset=args.offset, count=args.count)
    return await client.query_attachments(_group(client, args), request)


async def cmd_get_attachment(client: AsyncClient, args: argparse.Namespace) -> Any:
    group = _group(client, args)
    if args.no_download:
        return await client.attachment_url(group, args.key)
    target = Path(args.output) if args.output else Path(args.key.rsplit("/", 1)[-1])
    path = await client.download_attachment(group, args.key, target)
    return f"Downloaded {args.key} of group {group} to {path}"


async def cmd_get_worker(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.get_worker(args.uuid)


async def cmd_get_workers(client: AsyncClient, args: argparse.Namespace) -> Any:
    request = WorkersQueryReq(group_name=args.group, role=args.roles, tags=args.tags, labels=args.labels,
                              creator_username=args.creator, count=args.count)
    return await client.query_workers(request)


async def cmd_get_group(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.get_group(args.name)


async def cmd_get_groups(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.my_groups()


async def cmd_upload_artifact(client: AsyncClient, args: argparse.Namespace) -> Any:
    await client.upload_artifact(args.uuid, args.content_type, Path(args.local_file))
    return f"Uploaded {args.local_file} as the {args.content_type.value} of task {args.uuid}"


async def cmd_upload_attachment(client: AsyncClient, args: argparse.Namespace) -> Any:
    group = _group(client, args)
    path = Path(args.local_file)
    await client.upload_attachment(group, path, args.key)
    key = args.key or path.name
    return f"Uploaded {path} to group {group} as {key + path.name if key.endswith('/') else key}"


async def cmd_manage_worker(client: AsyncClient, args: argparse.Namespace) -> Any:
    action = args.worker_action
    if action == "cancel":
        await client.shutdown_worker(args.uuid, force=args.force)
        return f"Worker {args.uuid} is shutting down ({'force' if args.force else 'graceful'})"
    if action == "update-tags":
        await client.update_worker_tags(args.uuid, args.values)
    elif action == "update-labels":
        await client.update_worker_labels(args.uuid, args.values)
    elif action == "update-roles":
        await client.update_worker_roles(args.uuid, dict(args.values))
    else:
        await client.remove_worker_roles(args.uuid, args.values)
    return f"Worker {args.uuid}: {action} done"


async def cmd_manage_task(client: AsyncClient, args: argparse.Namespace) -> Any:
    action = args.task_action
    if action == "cancel":
        await client.cancel_task(args.uuid)
        info = (await client.get_task(args.uuid)).info
        if info.state is TaskState.Running:  # only asked: it ends when its worker has stopped it
            return f"Task {args.uuid} is running: its worker was told to stop it"
        return f"Task {args.uuid} cancelled"
    if action == "update-labels":
        await client.update_task_labels(args.uuid, args.values)
        return f"Task {args.uuid}: labels set to {', '.join(args.values) or '(none)'}"
    spec = None
    if args.command:  # a new command replaces the whole spec (its resources too), as the reference
        spec = TaskSpec(args=args.command, envs=dict(args.envs or []), terminal_output=args.terminal, watch=args.watch)
    await client.change_task(args.uuid, ChangeTaskReq(tags=args.tags, timeout=args.timeout, priority=args.priority, task_spec=spec))
    return f"Task {args.uuid} changed"


async def cmd_manage_group(client: AsyncClient, args: argparse.Namespace) -> Any:
    if args.group_action == "update-user":
        await client.update_members(args.name, dict(args.values))
    else:
        await client.remove_members(args.name, args.values)
    return f"Group {args.name}: {args.group_action} done"


async def cmd_shutdown(client: AsyncClient, args: argparse.Namespace) -> Any:
    await client.shutdown_coordinator(args.secret)
    return "The coordinator is shutting down"


async def cmd_sweep(client: AsyncClient, args: argparse.Namespace) -> Launched:
    """A papermill sweep: one task per combination of the ``-p NAME V1,V2`` values."""
    grid: dict[str, list[Any]] = {}
    for name, values in args.parameters or []:
        if name in grid:
            raise GrammarError(f"sweep: parameter {name!r} is given twice; list all its values once: -p {name} V1,V2")
        grid[name] = [parse_value(value.strip()) for value in values.split(",") if value.strip()]
        if not grid[name]:
            raise GrammarError(f"sweep: parameter {name!r} has no values")
    try:
        return await launch(
            client, Path(args.notebook), grid or [{}], name=args.name, group=args.group, tags=args.tags or [],
            labels=args.labels or [], timeout=args.timeout, priority=args.priority, kernel=args.kernel, python=args.python,
            cache=args.cache, force=args.force,
        )
    except ValueError as exc:
        raise GrammarError(f"sweep: {exc}") from None


async def cmd_alert_add(client: AsyncClient, args: argparse.Namespace) -> Any:
    secret = _ask_missing(args.secret, "Secret (the webhook's HMAC key)", secret=True)
    try:
        request = alert_request(args.label, args.url, secret, on=args.on, failures=args.failures, group=args.group)
    except ValidationError as exc:
        raise GrammarError(f"alert add: {describe_validation_error(exc)}") from None
    except ValueError as exc:
        raise GrammarError(f"alert add: {exc}") from None
    return await client.create_alert(request)


async def cmd_alert_list(client: AsyncClient, args: argparse.Namespace) -> Any:
    return await client.query_alerts(args.group)


async def cmd_alert_remove(client: AsyncClient, args: argparse.Namespace) -> Any:
    await client.remove_alert(args.id)
    return f"Removed alert {args.id}"


async def cmd_help(client: AsyncClient | None, args: argparse.Namespace) -> str:
    """``help [COMMAND...]``: the help of the client or of one of its commands."""
    try:
        build_parser().parse_args([*args.topic, "--help"])
    except HelpShown as shown:
        return str(shown).rstrip()
    except GrammarError as exc:
        return str(exc)
    return ""


async def cmd_quit(client: AsyncClient | None, args: argparse.Namespace) -> None:
    """Leaves the interactive mode (the shell handles it); a no-op on the command line."""


async def cmd_submit_many(client: AsyncClient, args: argparse.Namespace) -> Any:
    """``tasks submit-many -f FILE``: a JSON array of submit requests."""
    try:
        items = json.loads(Path(args.file).read_text())
        requests = [SubmitTaskReq.model_validate(item) for item in items]
    except (json.JSONDecodeError, TypeError, ValidationError) as exc:
        raise GrammarError(f"{args.file}: not a JSON array of tasks ({str(exc).splitlines()[0]})") from None
    answer = await client.submit_many(requests)
    lines = [f"Submitted task {r.Ok.uuid} (#{r.Ok.task_id})" if r.Ok else f"error: {r.Err.msg if r.Err else '?'}" for r in answer.results]
    return "\n".join(lines)


def _task_filter(args: argparse.Namespace) -> dict[str, Any]:
    return {"creator_usernames": args.creators, "group_name": args.group, "tags": args.tags, "labels": args.labels,
            "states": args.states, "exit_status": args.exit_status, "priority": args.priority}


async def cmd_cancel_many(client: AsyncClient, args: argparse.Namespace) -> Any:
    answer = await client.cancel_tasks(TasksCancelReq(**_task_filter(args)))
    return f"Cancelled {counted(answer.cancelled_count, 'task')} in group {answer.group_name}"


async def cmd_cancel_list(client: AsyncClient, args: argparse.Namespace) -> Any:
    answer = await client.cancel_task_list(args.uuids)
    failed = f"; not cancelled: {', '.join(map(str, answer.failed_uuids))}" if answer.failed_uuids else ""
    return f"Cancelled {counted(answer.cancelled_count, 'task')}{failed}"


async def _fetch_links(client: AsyncClient, links: list[tuple[str, Path]], args: argparse.Namespace) -> Any:
    if args.no_download:
        return "\n".join(f"{path}\t{url}" for url, path in links) or "Nothing to download"
    paths = await client.download_links(links, args.concurrent)
    return f"Downloaded {counted(len(paths), 'file')} into {args.output_dir}"


async def cmd_artifacts_download_many(client: AsyncClient, args: argparse.Namespace) -> Any:
    """Files are saved as ``<dir>/<task uuid>.<type>.tar.gz`` (the type in the name: several
    types can share a directory, unlike the reference's ``<uuid>.tar.gz``)."""
    if args.uuids:
        request: Any = ArtifactsListReq(uuids=args.uuids, content_type=args.content_type)
    else:
        request = ArtifactsFilterReq(**_task_filter(args), reporter_uuid=args.reporter_uuid, content_type=args.content_type)
    answer = await client.artifact_links(request)
    out = Path(args.output_dir)
    return await _fetch_links(client, [(d.url, out / f"{d.uuid}.{args.content_type.file_name}") for d in answer.downloads], args)


async def cmd_artifacts_delete(client: AsyncClient, args: argparse.Namespace) -> Any:
    if args.uuids is None:  # one artifact
        await client.delete_artifact(args.uuid, args.content_type, admin=args.admin_route)
        return f"Deleted the {args.content_type.value} of task {args.uuid}"
    if args.uuids:
        answer = await client.delete_artifacts(ArtifactsListReq(uuids=args.uuids, content_type=args.content_type))
    else:
        answer = await client.delete_artifacts(ArtifactsFilterReq(**_task_filter(args), reporter_uuid=args.reporter_uuid, content_type=args.content_type))
    return f"Deleted {counted(answer.deleted_count, 'artifact')} (those updated within the last hour are kept)"


async def cmd_attachments_download_many(client: AsyncClient, args: argparse.Namespace) -> Any:
    group = _group(client, args)
    answer = await client.attachment_links(group, args.key, args.limit, args.offset, keys=args.keys)
    out = Path(args.output_dir)
    return await _fetch_links(client, [(d.url, out / d.key.rsplit("/", 1)[-1]) for d in answer.downloads], args)


async def cmd_attachment_delete(client: AsyncClient, args: argparse.Namespace) -> Any:
    group = _group(client, args)
    if args.keys is None and args.key_filter is None and not args.many:
        await client.delete_attachment(group, args.key, admin=args.admin_route)
        return f"Deleted {args.key} of group {group}"
    answer = await client.delete_attachments(group, args.key_filter, args.limit, args.offset, keys=args.keys)
    return f"Deleted {counted(answer.deleted_count, 'attachment')} of group {group} (those updated within the last hour are kept)"


async def cmd_workers_cancel_many(client: AsyncClient, args: argparse.Namespace) -> Any:
    op = WorkerShutdownOp.Force if args.force else WorkerShutdownOp.Graceful
    if args.uuids:
        answer = await client.shutdown_workers(WorkersShutdownListReq(uuids=args.uuids, op=op))
    else:
        answer = await client.shutdown_workers(WorkersShutdownReq(group_name=args.group, role=args.roles, tags=args.tags,
                                                                  labels=args.labels, creator_username=args.creator, op=op))
    return f"Shutting down {counted(answer.shutdown_count, 'worker')} ({op.value.lower()})"


def _ask_missing(value: str | None, prompt: str, secret: bool = False) -> str:
    """The reference prompts for values left out; without a terminal that is a usage error."""
    if value:
        return value
    if not sys.stdin.isatty():
        raise GrammarError(f"give the {prompt.lower()} (there is no terminal to ask on)")
    return getpass.getpass(f"{prompt}: ") if secret else input(f"{prompt}: ").strip()


async def cmd_login(client: AsyncClient, args: argparse.Namespace) -> Any:
    username = _ask_missing(args.username, "Username")
    await client.login(username, _ask_missing(args.password, "Password", secret=True), retain=args.retain)
    return f"Logged in as {username}"


async def cmd_change_password(client: AsyncClient, args: argparse.Namespace) -> Any:
    await client.change_password(_ask_missing(args.old, "Current password", True), _ask_missing(args.new, "New password", True))
    return "Password changed; your other sessions have ended"


async def cmd_admin_users(client: AsyncClient, args: argparse.Namespace) -> Any:
    action = args.admin_action
    if action == "create":
        username = _ask_missing(args.username, "Username")
        await client.create_user(username, _ask_missing(args.password, "Password", True), args.admin)
        return f"Created user {username}"
    if action == "delete":
        return f"User {args.username} is {(await client.admin_delete_user(args.username)).state.value}"
    if action == "change-password":
        username = _ask_missing(args.username, "Username")
        await client.admin_set_password(username, _ask_missing(args.password, "New password", True))
        return f"Password of {username} reset; their sessions have ended"
    if action == "state":
        return f"User {args.username} is {(await client.admin_set_state(args.username, args.state)).state.value}"
    return f"User {args.username} may create {(await client.admin_group_quota(args.username, args.quota)).group_quota} groups"


async def cmd_admin_storage_quota(client: AsyncClient, args: argparse.Namespace) -> Any:
    return f"Group {args.group} may store {size_text((await client.admin_storage_quota(args.group, args.quota)).storage_quota)}"


async def cmd_admin_worker(client: AsyncClient, args: argparse.Namespace) -> Any:
    await client.admin_shutdown_worker(args.uuid, force=args.force)
    return f"Worker {args.uuid} is shutting down ({'force' if args.force else 'graceful'})"


def _pair(text: str) -> tuple[str, Role]:
    """``name:role`` (``user:write``, ``group:admin``)."""
    name, sep, role = text.partition(":")
    if not sep or not name:
        raise ValueError("use NAME:ROLE with ROLE read, write or admin")
    return name, Role(role)


# --- the tree -------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    commands = parser.add_subparsers(title="commands", metavar="<COMMAND>", parser_class=CommandParser)
    commands.required = True
    return commands


def _add_task_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--creators", nargs="*", action=CommaList, help="creators' usernames")
    parser.add_argument("-g", "--group", help="group to query (default: your own)")
    parser.add_argument("-t", "--tags", nargs="*", action=CommaList, help="tasks having all these tags")
    parser.add_argument("-l", "--labels", nargs="*", action=CommaList, help="tasks having all these labels")
    parser.add_argument("-s", "--states", nargs="*", action=CommaList, convert=_task_state,
                        help="pending, ready, running, finished, cancelled")
    parser.add_argument("-e", "--exit-status", help="exit status comparison: =N, !=N, <N, <=N, >N, >=N")
    parser.add_argument("-p", "--priority", help="priority comparison: =N, !=N, <N, <=N, >N, >=N")
    parser.add_argument("--reporter-uuid", type=UUID_ARG, help="tasks committed by this worker")


def _add_submit_options(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("-g", "--group", dest="group_name", help="The name of the group this task is submitted to")
    submit.add_argument("-t", "--tags", nargs="*", action=CommaList, help="The tags of the task, used to filter workers to execute the task")
    submit.add_argument("-l", "--labels", nargs="*", action=CommaList, help="The labels of the task, used for querying tasks")
    submit.add_argument("--timeout", default="10min", type=_argument_type(parse_duration, "duration"),
                        help="The timeout of the task [default: 10min]")
    submit.add_argument("-p", "--priority", type=int, default=0, help="The priority of the task [default: 0]")
    submit.add_argument("-e", "--envs", nargs="*", default=[], action=CommaList, convert=_env,
                        help="The environment variables to set, KEY=VALUE[,KEY=VALUE...]")
    submit.add_argument("--terminal", action="store_true",
                        help="Whether to collect the terminal standard output and error of the executed task")
    submit.add_argument("-r", "--resources", nargs="*", default=[], action=CommaList, convert=_resource,
                        help="Files to download before the task runs: artifact=UUID:TYPE:PATH or attachment=KEY:PATH")
    submit.add_argument("--watch", type=_argument_type(_watch, "watch"),
                        help="The UUID and the state of the task to watch before triggering this task, as UUID,STATE")
    _add_cache_options(submit, "the task")
    submit.add_argument("command", nargs="*", metavar="COMMAND", help="The command to run")


def _add_cache_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--cache", action="store_true", help=f"answer {what} at once from the group's newest successful run "
                        "of the same command, environment and resources, if there is one (no worker runs it)")
    parser.add_argument("--force", action="store_true", help="run even if the cache has an answer, and be the run later --cache submits find")


def _add_change_options(change: argparse.ArgumentParser) -> None:
    change.add_argument("-t", "--tags", nargs="*", action=CommaList, help="new tags")
    change.add_argument("--timeout", type=_argument_type(parse_duration, "duration"), help="new timeout")
    change.add_argument("-p", "--priority", type=int, help="new priority")
    change.add_argument("-e", "--envs", nargs="*", default=[], action=CommaList, convert=_env, help="environment (with a new command)")
    change.add_argument("--terminal", action="store_true", help="collect stdout/stderr (with a new command)")
    change.add_argument("--watch", type=_argument_type(_watch, "watch"), help="UUID,STATE (with a new command)")
    change.add_argument("command", nargs="*", metavar="COMMAND", help="a new command (replaces the whole spec)")


def _add_worker_filters(workers: argparse.ArgumentParser) -> None:
    workers.add_argument("-g", "--group", help="the group (default: your own)")
    workers.add_argument("-r", "--roles", nargs="*", action=CommaList, convert=Role, help="the group's roles on them: read, write, admin")
    workers.add_argument("-t", "--tags", nargs="*", action=CommaList, help="workers having all these tags")
    workers.add_argument("-l", "--labels", nargs="*", action=CommaList, help="workers having all these labels")
    workers.add_argument("--creator", help="workers registered by this user")


def build_parser(prog: str = "mito client") -> Parser:
    parser = Parser(prog=prog, description="Run a mitosis client command")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.commands = _subcommands(parser)

    auth = commands.add_parser("auth", help="Authenticate the user")
    auth.set_defaults(func=cmd_auth)

    create = commands.add_parser("create", help="Create a new user or group")
    create_commands = _subcommands(create)
    user = create_commands.add_parser("user", help="Create a new user")
    user.add_argument("-u", "--username", required=True, help="The username of the user")
    user.add_argument("-p", "--password", required=True, help="The password of the user")
    user.add_argument("--admin", action="store_true", help="Whether the user is an admin")
    user.set_defaults(func=cmd_create_user)
    group = create_commands.add_parser("group", help="Create a new group")
    group.add_argument("name", metavar="GROUP_NAME", help="The name of the group")
    group.set_defaults(func=cmd_create_group)

    submit = commands.add_parser("submit", help="Submit a task", usage="submit [OPTIONS] [-- <COMMAND>...]")
    _add_submit_options(submit)
    submit.set_defaults(func=cmd_submit)

    rerun = commands.add_parser("rerun", help="Run tasks again as new tasks, with a changed timeout, tags or priority")
    rerun.add_argument("uuids", type=UUID_ARG, nargs="+", metavar="UUID")
    rerun.add_argument("--timeout", help="a new timeout (1h, 30min) or a factor of the old one (x2)")
    rerun.add_argument("-t", "--tags", nargs="*", action=CommaList, help="run where these tags are (default: the task's own)")
    rerun.add_argument("-p", "--priority", type=int, help="a new priority (default: the task's own)")
    rerun.set_defaults(func=cmd_rerun)

    why = commands.add_parser("why", help="Why a task waits: its place in the queue, what it waits for, which workers could run it")
    why.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    why.set_defaults(func=cmd_why)

    get = commands.add_parser("get", help="Get the info of a task, artifact, or a list of tasks subject to the filters")
    get_commands = _subcommands(get)
    task = get_commands.add_parser("task", help="Get the info of a task")
    task.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    task.set_defaults(func=cmd_get_task)
    tasks = get_commands.add_parser("tasks", help="Query a list of tasks subject to the filter")
    _add_task_filters(tasks)
    tasks.add_argument("--limit", type=int, help="at most this many tasks (newest first)")
    tasks.add_argument("--offset", type=int, help="skip this many tasks")
    tasks.add_argument("-v", "--verbose", action="store_true", help="show every field")
    tasks.add_argument("--count", action="store_true", help="only count the matching tasks")
    tasks.set_defaults(func=cmd_get_tasks)
    artifact = get_commands.add_parser("artifact", help="Download an artifact of a task")
    artifact.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    artifact.add_argument("content_type", type=TYPE_ARG, metavar="TYPE", help="result, exec-log or std-log")
    artifact.add_argument("-o", "--output", help="where to save it [default: ./<TYPE>.tar.gz]")
    artifact.add_argument("--no-download", action="store_true", help="only print the download URL")
    artifact.add_argument("-x", "--extract", metavar="DIR", help="also unpack it into DIR (members that would escape DIR are refused)")
    artifact.set_defaults(func=cmd_get_artifact)
    logs = get_commands.add_parser("logs", help="Show the output of a task, live with --follow")
    logs.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing output until the task ends")
    logs.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    logs.set_defaults(func=cmd_get_logs)

    meta = get_commands.add_parser("attachment-meta", help="Get the metadata of an attachment")
    meta.add_argument("group", metavar="GROUP_NAME")
    meta.add_argument("key", metavar="KEY")
    meta.set_defaults(func=cmd_get_attachment_meta)
    attachments = get_commands.add_parser("attachments", help="Query a list of attachments subject to the filter")
    attachments.add_argument("-g", "--group", help="the group (default: your own)")
    attachments.add_argument("-k", "--key", help="keys containing this text")
    attachments.add_argument("--limit", type=int)
    attachments.add_argument("--offset", type=int)
    attachments.add_argument("--count", action="store_true", help="only count them")
    attachments.set_defaults(func=cmd_get_attachments)
    worker = get_commands.add_parser("worker", help="Get the info of a worker")
    worker.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    worker.set_defaults(func=cmd_get_worker)
    workers = get_commands.add_parser("workers", help="Query a list of workers subject to the filter")
    _add_worker_filters(workers)
    workers.add_argument("-v", "--verbose", action="store_true", help="show every field")
    workers.add_argument("--count", action="store_true", help="only count them")
    workers.set_defaults(func=cmd_get_workers)
    group_info = get_commands.add_parser("group", help="Get the information of a group")
    group_info.add_argument("name", metavar="GROUP_NAME")
    group_info.set_defaults(func=cmd_get_group)
    groups = get_commands.add_parser("groups", help="Get all groups the user has access to")
    groups.set_defaults(func=cmd_get_groups)
    attachment = get_commands.add_parser("attachment", help="Download an attachment of a group")
    attachment.add_argument("group", metavar="GROUP_NAME")
    attachment.add_argument("key", metavar="KEY")
    attachment.add_argument("-o", "--output", help="where to save it [default: the key's last part, here]")
    attachment.add_argument("--no-download", action="store_true", help="only print the download URL")
    attachment.set_defaults(func=cmd_get_attachment)

    upload = commands.add_parser("upload", help="Upload an artifact or attachment")
    upload_commands = _subcommands(upload)
    artifact_up = upload_commands.add_parser("artifact", help="Upload an artifact to a task")
    artifact_up.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    artifact_up.add_argument("content_type", type=TYPE_ARG, metavar="TYPE", help="result, exec-log or std-log")
    artifact_up.add_argument("local_file", metavar="LOCAL_FILE")
    artifact_up.set_defaults(func=cmd_upload_artifact)
    attachment_up = upload_commands.add_parser("attachment", help="Upload an attachment to a group")
    attachment_up.add_argument("-g", "--group", help="the group (default: your own)")
    attachment_up.add_argument("local_file", metavar="LOCAL_FILE")
    attachment_up.add_argument("key", nargs="?", metavar="KEY", help="[default: the file name; a KEY ending in / gets it appended]")
    attachment_up.set_defaults(func=cmd_upload_attachment)

    manage = commands.add_parser("manage", help="Manage a worker, a task or a group")
    manage_commands = _subcommands(manage)
    worker_m = manage_commands.add_parser("worker", help="Manage a worker", usage="manage worker UUID <ACTION> ...")
    worker_m.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    worker_actions = worker_m.actions = _subcommands(worker_m)
    cancel_w = worker_actions.add_parser("cancel", help="Shut the worker down (graceful: after its current task)")
    cancel_w.add_argument("-f", "--force", action="store_true", help="at once; its task goes back to the queue")
    for action, help_text, metavar, nargs, convert in (
        ("update-tags", "Replace the worker's tags", "TAGS", "*", None),
        ("update-labels", "Replace the worker's labels", "LABELS", "*", None),
        ("update-roles", "Give groups roles on the worker", "GROUP:ROLE", "+", _pair),
        ("remove-roles", "Take groups off the worker", "GROUP", "+", None),
    ):
        sub = worker_actions.add_parser(action, help=help_text)
        sub.add_argument("values", nargs=nargs, action=CommaList, convert=convert, metavar=metavar)
    for name, sub in worker_actions.choices.items():
        sub.set_defaults(func=cmd_manage_worker, worker_action=name)

    task_m = manage_commands.add_parser("task", help="Manage a task", usage="manage task UUID <ACTION> ...")
    task_m.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    task_actions = task_m.actions = _subcommands(task_m)
    task_actions.add_parser("cancel", help="Cancel the task (a running one is stopped)")
    labels_t = task_actions.add_parser("update-labels", help="Replace the task's labels")
    labels_t.add_argument("values", nargs="*", action=CommaList, metavar="LABELS")
    change = task_actions.add_parser("change", help="Change a task that has not started", usage="manage task UUID change [OPTIONS] [-- <COMMAND>...]")
    _add_change_options(change)
    for name, sub in task_actions.choices.items():
        sub.set_defaults(func=cmd_manage_task, task_action=name)

    group_m = manage_commands.add_parser("group", help="Manage a group", usage="manage group GROUP_NAME <ACTION> ...")
    group_m.add_argument("name", metavar="GROUP_NAME")
    group_actions = group_m.actions = _subcommands(group_m)
    update_user = group_actions.add_parser("update-user", help="Add members or change their roles")
    update_user.add_argument("values", nargs="+", action=CommaList, convert=_pair, metavar="USER:ROLE")
    remove_user = group_actions.add_parser("remove-user", help="Remove members")
    remove_user.add_argument("values", nargs="+", action=CommaList, metavar="USER")
    for name, sub in group_actions.choices.items():
        sub.set_defaults(func=cmd_manage_group, group_action=name)

    sweep = commands.add_parser("sweep", help="Run a notebook with papermill once per parameter combination",
                                usage="sweep NOTEBOOK [-p NAME V1,V2,...]... [OPTIONS]")
    sweep.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file (uploaded once to the group)")
    sweep.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("NAME", "VALUES"),
                       help="a parameter and its comma-separated values (JSON where they parse: 0.1, 3, true)")
    sweep.add_argument("-n", "--name", help="the sweep's name [default: the notebook's name and a random suffix]")
    sweep.add_argument("-g", "--group", help="the group to run in [default: your own]")
    sweep.add_argument("-t", "--tags", nargs="*", action=CommaList, help="tags the workers must have")
    sweep.add_argument("-l", "--labels", nargs="*", action=CommaList, help="more labels for every run")
    sweep.add_argument("--timeout", default="1h", type=_argument_type(parse_duration, "duration"), help="per run [default: 1h]")
    sweep.add_argument("--priority", type=int, default=0, help="[default: 0]")
    sweep.add_argument("--kernel", help="the kernel on the workers [default: the notebook's]")
    sweep.add_argument("--python", default="python3", help="the Python with mito_lab on the workers [default: python3]")
    _add_cache_options(sweep, "each run")
    sweep.set_defaults(func=cmd_sweep)

    alert = _subcommands(commands.add_parser("alert", help="Campaign alerts: a webhook told when a label's runs are done or failing"))
    add = alert.add_parser("add", help="POST to URL when the runs labelled LABEL have all ended, or when their failures pass a threshold",
                           usage="alert add LABEL URL [--secret SECRET] [--failures N|P%%] [--on done,failures] [-g GROUP]")
    add.add_argument("label", metavar="LABEL", help="the runs' label (a sweep's is mito-sweep:NAME)")
    add.add_argument("url", metavar="URL", help="the webhook, http:// or https://")
    add.add_argument("--secret", help="the HMAC key that signs each POST (X-Mito-Signature), 16 characters or more [default: asked]")
    add.add_argument("--failures", help="fire 'failures' once this many runs failed (3), or this share of them (20%%)")
    add.add_argument("--on", nargs="*", action=CommaList, convert=AlertEvent, metavar="EVENTS",
                     help="done, failures [default: done, and failures with --failures]")
    add.add_argument("-g", "--group", help="the group [default: your own]")
    add.set_defaults(func=cmd_alert_add)
    listing = alert.add_parser("list", help="The alerts of a group")
    listing.add_argument("-g", "--group", help="the group [default: your own]")
    listing.set_defaults(func=cmd_alert_list)
    remove = alert.add_parser("remove", help="Delete an alert")
    remove.add_argument("id", type=_argument_type(int, "alert id"), metavar="ID")
    remove.set_defaults(func=cmd_alert_remove)

    shutdown = commands.add_parser("shutdown", help="Shutdown the coordinator")
    shutdown.add_argument("secret", metavar="SECRET", help="the secret in the coordinator's start-up log")
    shutdown.set_defaults(func=cmd_shutdown)

    for name in ("quit", "exit"):
        leave = commands.add_parser(name, help="Quit the client's interactive mode")
        leave.set_defaults(func=cmd_quit, offline=True)
    helper = commands.add_parser("help", help="Print this message or the help of the given subcommand(s)")
    helper.add_argument("topic", nargs="*", metavar="COMMAND")
    helper.set_defaults(func=cmd_help, offline=True)
    _add_reference_tree(commands)
    return parser


def _add_reference_tree(commands: argparse._SubParsersAction) -> None:
    """The newer reference's (0.6) command groups, beside the seed guide's: the same functions."""
    login = commands.add_parser("login", help="Log in (again), as another user if you like")
    login.add_argument("username", nargs="?", metavar="USERNAME")
    login.add_argument("password", nargs="?", metavar="PASSWORD")
    login.add_argument("--retain", action="store_true", help="keep your other sessions valid")
    login.set_defaults(func=cmd_login)

    users = _subcommands(commands.add_parser("users", help="Your account"))
    password = users.add_parser("change-password", help="Change your password (your other sessions end)")
    password.add_argument("old", nargs="?", metavar="ORIG_PASSWORD")
    password.add_argument("new", nargs="?", metavar="NEW_PASSWORD")
    password.set_defaults(func=cmd_change_password)
    for name in ("groups", "my-groups"):
        users.add_parser(name, help="Your groups and roles").set_defaults(func=cmd_get_groups)

    groups = _subcommands(commands.add_parser("groups", help="Groups, members and attachments"))
    create = groups.add_parser("create", help="Create a group")
    create.add_argument("name", metavar="GROUP")
    create.set_defaults(func=cmd_create_group)
    get = groups.add_parser("get", help="A group's information")
    get.add_argument("name", metavar="GROUP")
    get.set_defaults(func=cmd_get_group)
    for action, metavar, convert in (("update-user", "USER:ROLE", _pair), ("remove-user", "USER", None)):
        member = groups.add_parser(action, help="Add members or change roles" if convert else "Remove members")
        member.add_argument("name", metavar="GROUP")
        member.add_argument("values", nargs="+", action=CommaList, convert=convert, metavar=metavar)
        member.set_defaults(func=cmd_manage_group, group_action=action)
    attachments = _subcommands(groups.add_parser("attachments", help="A group's attachments"))

    def attachment_command(name: str, help_text: str, func: Command, **defaults: Any) -> argparse.ArgumentParser:
        sub = attachments.add_parser(name, help=help_text)
        sub.add_argument("-g", "--group", help="the group (default: your own)")
        sub.set_defaults(func=func, **defaults)
        return sub

    upload = attachment_command("upload", "Upload a file", cmd_upload_attachment)
    upload.add_argument("local_file", metavar="LOCAL_FILE")
    upload.add_argument("key", nargs="?", metavar="KEY")
    download = attachment_command("download", "Download one", cmd_get_attachment)
    download.add_argument("key", metavar="KEY")
    download.add_argument("-o", "--output", help="where to save it")
    download.add_argument("--no-download", action="store_true", help="only print the URL")
    attachment_command("get", "Its metadata", cmd_get_attachment_meta).add_argument("key", metavar="KEY")
    delete = attachment_command("delete", "Delete one", cmd_attachment_delete, keys=None, key_filter=None, many=False, admin_route=False)
    delete.add_argument("key", metavar="KEY")
    query = attachment_command("query", "List them", cmd_get_attachments)
    for sub, batch_keys in (
        (query, False),
        (attachment_command("download-many", "Download those matching -k", cmd_attachments_download_many, keys=None), False),
        (attachment_command("download-list", "Download the listed keys", cmd_attachments_download_many, key=None, limit=None, offset=None), True),
        (attachment_command("delete-many", "Delete those matching -k", cmd_attachment_delete, keys=None, many=True, admin_route=False), False),
        (attachment_command("delete-list", "Delete the listed keys", cmd_attachment_delete, key_filter=None, limit=None, offset=None, many=True, admin_route=False), True),
    ):
        if batch_keys:
            sub.add_argument("keys", nargs="+", metavar="KEYS")
        else:
            sub.add_argument("-k", "--key", dest="key_filter" if sub.prog.endswith("delete-many") else "key", help="keys containing this text")
            sub.add_argument("--limit", type=int)
            sub.add_argument("--offset", type=int)
        if "download" in sub.prog:
            sub.add_argument("-o", "--output-dir", default=".", help="the directory [default: .]")
            sub.add_argument("--no-download", action="store_true", help="only print the URLs")
            sub.add_argument("--concurrent", type=int, default=1, help="downloads at a time [default: 1]")
    query.add_argument("--count", action="store_true", help="only count them")

    tasks = _subcommands(commands.add_parser("tasks", help="Tasks and artifacts, single and in batches"))
    submit = tasks.add_parser("submit", help="Submit a task", usage="tasks submit [OPTIONS] [-- <COMMAND>...]")
    _add_submit_options(submit)
    submit.set_defaults(func=cmd_submit)
    many = tasks.add_parser("submit-many", help="Submit the tasks of a JSON file (an array of submit requests)")
    many.add_argument("-f", "--file", required=True, help="the JSON file")
    many.set_defaults(func=cmd_submit_many)
    one = tasks.add_parser("get", help="A task and its artifacts")
    one.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    one.set_defaults(func=cmd_get_task)
    query_tasks = tasks.add_parser("query", help="Query tasks")
    _add_task_filters(query_tasks)
    query_tasks.add_argument("--limit", type=int)
    query_tasks.add_argument("--offset", type=int)
    query_tasks.add_argument("-v", "--verbose", action="store_true")
    query_tasks.add_argument("--count", action="store_true")
    query_tasks.set_defaults(func=cmd_get_tasks)
    for action, help_text in (("cancel", "Cancel a task"), ("update-labels", "Replace a task's labels"), ("change", "Change a task that has not started")):
        sub = tasks.add_parser(action, help=help_text)
        sub.add_argument("uuid", type=UUID_ARG, metavar="UUID")
        if action == "update-labels":
            sub.add_argument("values", nargs="*", action=CommaList, metavar="LABELS")
        if action == "change":
            _add_change_options(sub)
        sub.set_defaults(func=cmd_manage_task, task_action=action)
    cancel_many = tasks.add_parser("cancel-many", help="Cancel the Ready and Pending tasks matching the filter")
    _add_task_filters(cancel_many)
    cancel_many.set_defaults(func=cmd_cancel_many)
    cancel_list = tasks.add_parser("cancel-list", help="Cancel the listed tasks")
    cancel_list.add_argument("uuids", nargs="+", action=CommaList, convert=uuid_module.UUID, metavar="UUIDS")
    cancel_list.set_defaults(func=cmd_cancel_list)
    artifacts = _subcommands(tasks.add_parser("artifacts", help="Task artifacts"))
    up = artifacts.add_parser("upload", help="Upload an artifact")
    up.add_argument("local_file", metavar="LOCAL_FILE")
    up.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    up.add_argument("content_type", type=TYPE_ARG, metavar="TYPE")
    up.set_defaults(func=cmd_upload_artifact)
    down = artifacts.add_parser("download", help="Download an artifact")
    down.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    down.add_argument("content_type", type=TYPE_ARG, metavar="TYPE")
    down.add_argument("-o", "--output")
    down.add_argument("--no-download", action="store_true")
    down.add_argument("-x", "--extract", metavar="DIR")
    down.set_defaults(func=cmd_get_artifact)
    gone = artifacts.add_parser("delete", help="Delete an artifact (not within an hour of its upload)")
    gone.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    gone.add_argument("content_type", type=TYPE_ARG, metavar="TYPE")
    gone.set_defaults(func=cmd_artifacts_delete, uuids=None, admin_route=False)
    for action, func in (("download-many", cmd_artifacts_download_many), ("download-list", cmd_artifacts_download_many),
                         ("delete-many", cmd_artifacts_delete), ("delete-list", cmd_artifacts_delete)):
        sub = artifacts.add_parser(action, help=f"{action.split('-')[0].title()} one artifact type of " + ("the listed tasks" if action.endswith("list") else "the tasks matching the filter"))
        sub.add_argument("content_type", type=TYPE_ARG, metavar="TYPE")
        if action.endswith("list"):
            sub.add_argument("uuids", nargs="+", action=CommaList, convert=uuid_module.UUID, metavar="UUIDS")
        else:
            _add_task_filters(sub)
            sub.set_defaults(uuids=[])
        if action.startswith("download"):
            sub.add_argument("-o", "--output-dir", default=".", help="the directory [default: .]; files are <uuid>.<type>.tar.gz")
            sub.add_argument("--no-download", action="store_true")
            sub.add_argument("--concurrent", type=int, default=1)
        sub.set_defaults(func=func, admin_route=False)

    workers = _subcommands(commands.add_parser("workers", help="Workers, single and in batches"))
    cancel = workers.add_parser("cancel", help="Shut a worker down")
    cancel.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    cancel.add_argument("-f", "--force", action="store_true")
    cancel.set_defaults(func=cmd_manage_worker, worker_action="cancel")
    for action in ("cancel-many", "cancel-list"):
        sub = workers.add_parser(action, help="Shut down the workers " + ("listed" if action.endswith("list") else "matching the filter"))
        if action.endswith("list"):
            sub.add_argument("uuids", nargs="+", action=CommaList, convert=uuid_module.UUID, metavar="UUIDS")
        else:
            _add_worker_filters(sub)
            sub.set_defaults(uuids=None)
        sub.add_argument("-f", "--force", action="store_true")
        sub.set_defaults(func=cmd_workers_cancel_many)
    for action, metavar, nargs, convert in (("update-tags", "TAGS", "*", None), ("update-labels", "LABELS", "*", None),
                                            ("update-roles", "GROUP:ROLE", "+", _pair), ("remove-roles", "GROUP", "+", None)):
        sub = workers.add_parser(action)
        sub.add_argument("uuid", type=UUID_ARG, metavar="UUID")
        sub.add_argument("values", nargs=nargs, action=CommaList, convert=convert, metavar=metavar)
        sub.set_defaults(func=cmd_manage_worker, worker_action=action)
    show = workers.add_parser("get", help="A worker")
    show.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    show.set_defaults(func=cmd_get_worker)
    listing = workers.add_parser("query", help="Query workers")
    _add_worker_filters(listing)
    listing.add_argument("-v", "--verbose", action="store_true")
    listing.add_argument("--count", action="store_true")
    listing.set_defaults(func=cmd_get_workers)

    admin = _subcommands(commands.add_parser("admin", help="System administration"))
    admin_users = _subcommands(admin.add_parser("users", help="Users"))
    made = admin_users.add_parser("create", help="Create a user (asks for what is left out)")
    made.add_argument("username", nargs="?", metavar="USERNAME")
    made.add_argument("password", nargs="?", metavar="PASSWORD")
    made.add_argument("--admin", action="store_true")
    removed = admin_users.add_parser("delete", help="Soft-delete a user")
    removed.add_argument("username", metavar="USERNAME")
    reset = admin_users.add_parser("change-password", help="Reset a user's password")
    reset.add_argument("username", nargs="?", metavar="USERNAME")
    reset.add_argument("password", nargs="?", metavar="NEW_PASSWORD")
    quota = admin_users.add_parser("group-quota", help="How many groups a user may create: N, =N, +N, -N")
    quota.add_argument("username", metavar="USERNAME")
    quota.add_argument("quota", metavar="QUOTA")
    state = admin_users.add_parser("state", help="Set a user's state")
    state.add_argument("username", metavar="USERNAME")
    state.add_argument("state", type=_argument_type(UserState, "state"), metavar="Active|Locked|Deleted")
    for name, sub in admin_users.choices.items():
        sub.set_defaults(func=cmd_admin_users, admin_action=name)
    stop = admin.add_parser("shutdown", help="Stop the coordinator")
    stop.add_argument("secret", metavar="SECRET")
    stop.set_defaults(func=cmd_shutdown)
    admin_groups = _subcommands(admin.add_parser("groups", help="Groups"))
    storage = admin_groups.add_parser("storage-quota", help="A group's storage quota, e.g. +1GB, =500MB, 2GiB")
    storage.add_argument("group", metavar="GROUP")
    storage.add_argument("quota", metavar="QUOTA")
    storage.set_defaults(func=cmd_admin_storage_quota)
    forced = _subcommands(admin_groups.add_parser("attachments", help="Attachments")).add_parser("delete", help="Delete any attachment at once")
    forced.add_argument("-g", "--group", help="the group (default: your own)")
    forced.add_argument("key", metavar="KEY")
    forced.set_defaults(func=cmd_attachment_delete, keys=None, key_filter=None, many=False, admin_route=True)
    artifact_gone = _subcommands(_subcommands(admin.add_parser("tasks", help="Tasks")).add_parser("artifacts", help="Artifacts")).add_parser("delete", help="Delete any artifact at once")
    artifact_gone.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    artifact_gone.add_argument("content_type", type=TYPE_ARG, metavar="TYPE")
    artifact_gone.set_defaults(func=cmd_artifacts_delete, uuids=None, admin_route=True)
    halt = _subcommands(admin.add_parser("workers", help="Workers")).add_parser("cancel", help="Shut down any worker")
    halt.add_argument("uuid", type=UUID_ARG, metavar="UUID")
    halt.add_argument("-f", "--force", action="store_true")
    halt.set_defaults(func=cmd_admin_worker)


def parse(argv: list[str], prog: str = "mito client") -> argparse.Namespace:
    """Parse one client command line (without the ``mito client`` prefix)."""
    return build_parser(prog).parse_args(argv)

