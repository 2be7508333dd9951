"""Result caching, opt-in: a task submitted with ``cache`` is answered by the newest run of the
same work in its group that succeeded, instead of running again (a cache hit).

The same work is the same cache key: the SHA-256 of a canonical JSON of the group, the spec's
args, envs, terminal_output and watch, and each resource's path with its content's digest (an
attachment's, or an upstream artifact's). A digest is the object's MD5, which S3 gives as the
ETag of a single-part upload and the local store computes; it is asked of the store the first
time a key needs it and kept on the artifact or attachment row (uploads and commits stay as they
were: only cached submits pay for digests, once per object). Where the store cannot tell
a digest (an object uploaded in parts), the object's name stands in: no object is ever rewritten
(each upload names its own, ``services/uploads.py``), so the lookup may miss, never find other
content. Tags, labels, priority, timeout and attempts decide where and when a task runs, not
what it makes: they are not in the key.

Only the tasks submitted with ``cache`` or ``force`` carry a key, so the others cost nothing. A
source is a run that ran (a hit has no key): Finished, exit status 0, no result message (its
outputs all arrived), whose artifacts were neither deleted nor replaced since (either takes its
key off: ``uploads.no_longer_cached``). A hit is a new task, created Finished with exit status 0
and ``cached_from`` its source, whose artifact rows name the source's objects: nothing is copied
or charged again (``uploads.shared_objects``).
"""

from __future__ import annotations

import hashlib
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import Statements, chunks
from mito_lab.server.db.models import Artifact, Attachment, Group, Task, User, UserGroup
from mito_lab.server.services.context import Context
from mito_lab.server.services.uploads import artifact_key, artifact_object, attachment_object
from mito_lab.wire import ArtifactContentType, ArtifactSource, SubmitTaskReq, TaskState

KEY_VERSION = 1  # in every key: a change of what goes into keys makes the old ones miss


@dataclass(frozen=True)
class Keyed:
    """What caching makes of one submitted task: its key, whether to look it up (``cache`` without
    ``force``), and once looked up, the run it is answered from."""

    key: str
    lookup: bool
    source: uuid_module.UUID | None = None


@dataclass
class _Stored:
    """An artifact or attachment the key of a task refers to."""

    model: type[Artifact] | type[Attachment]
    id: int
    object_key: str | None  # as on its row: None for objects stored before uploads had their own names
    name: str  # the object's name in its bucket
    digest: str | None

    @property
    def identity(self) -> str:
        return self.digest or f"object:{self.name}"


async def cache_keys(context: Context, user: User, requests: Sequence[SubmitTaskReq]) -> list[Keyed | None]:
    """The key of each request submitted with ``cache`` or ``force``; None for the others, and
    for those whose resources are not all stored (yet) or not readable by ``user`` (they run as
    any task). Computed before the submit's transaction: a digest may need the store to read
    the object whole."""
    wanted = [index for index, request in enumerate(requests) if request.cache or request.force]
    keys: list[Keyed | None] = [None] * len(requests)
    if not wanted:
        return keys
    stored = await _resources(context, user, [requests[index] for index in wanted])
    learned = []
    for found in stored.values():
        if found.digest is None:
            bucket = context.artifacts_bucket if found.model is Artifact else context.attachments_bucket
            found.digest = await context.store.digest(bucket, found.name)
            if found.digest is not None:
                learned.append(found)
    if learned:
        async with context.db.write() as session:
            for found in learned:  # kept only if the row still names that object
                await session.execute(
                    sa.update(found.model)
                    .where(found.model.id == found.id, found.model.object_key.is_(None) if found.object_key is None else found.model.object_key == found.object_key)
                    .values(digest=found.digest)
                )
    for index in wanted:
        request = requests[index]
        group = request.group_name or user.username
        identities = []
        for resource in request.task_spec.resources:
            found = stored.get(_reference(resource.remote_file, group))
            if found is None:
                break
            identities.append((resource.local_path, found.identity))
        else:
            spec = request.task_spec
            material = {
                "version": KEY_VERSION, "group": group, "args": spec.args, "envs": spec.envs,
                "terminal_output": spec.terminal_output, "watch": spec.watch and [str(spec.watch[0]), spec.watch[1].value],
                "resources": sorted(identities),
            }
            key = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
            keys[index] = Keyed(key, lookup=request.cache and not request.force)
    return keys


def _reference(source: Any, group: str) -> tuple[Any, ...]:
    if isinstance(source, ArtifactSource):
        return ("artifact", source.Artifact.uuid, source.Artifact.content_type)
    return ("attachment", group, source.Attachment.key)


async def _resources(context: Context, user: User, requests: Sequence[SubmitTaskReq]) -> dict[tuple[Any, ...], _Stored]:
    """The stored artifacts and attachments the requests refer to, in groups ``user`` belongs to."""
    artifacts: set[uuid_module.UUID] = set()
    attachments: dict[str, set[str]] = {}
    for request in requests:
        for resource in request.task_spec.resources:
            kind, *reference = _reference(resource.remote_file, request.group_name or user.username)
            if kind == "artifact":
                artifacts.add(reference[0])
            else:
                attachments.setdefault(reference[0], set()).add(reference[1])
    member_of = sa.select(UserGroup.group_id).where(UserGroup.user_id == user.id)
    found: dict[tuple[Any, ...], _Stored] = {}
    async with context.db.read() as session:
        for chunk in chunks(list(artifacts)):
            rows = await session.scalars(
                sa.select(Artifact).join(Task, Task.uuid == Artifact.task_uuid)
                .where(Artifact.task_uuid.in_(chunk), Task.group_id.in_(member_of))
            )
            for artifact in rows:
                found[("artifact", artifact.task_uuid, artifact.content_type)] = _Stored(
                    Artifact, artifact.id, artifact.object_key, artifact_object(artifact), artifact.digest
                )
        for group, keys in attachments.items():
            for chunk in chunks(list(keys)):
                pairs = await session.execute(
                    sa.select(Attachment, Group.group_name).join(Group, Group.id == Attachment.group_id)
                    .where(Group.group_name == group, Group.id.in_(member_of), Attachment.key.in_(chunk))
                )
                for attachment, group_name in pairs:
                    found[("attachment", group_name, attachment.key)] = _Stored(
                        Attachment, attachment.id, attachment.object_key, attachment_object(group_name, attachment), attachment.digest
                    )
    return found


async def look_up(context: Context, session: AsyncSession | Statements, wanted: Sequence[tuple[int, Keyed | None]]) -> list[Keyed | None]:
    """Each (group id, key) with the run it is answered from, if it is looked up and the group has
    a source of its key: the newest. One query for a batch. On PostgreSQL the sources are locked
    (shared) until the submit commits, so that their artifacts cannot go while hits take them."""
    keys = {keyed.key for _, keyed in wanted if keyed is not None and keyed.lookup}
    if not keys:
        return [keyed for _, keyed in wanted]
    query = sa.select(Task.id, Task.uuid, Task.group_id, Task.cache_key).where(
        Task.cache_key.in_(keys), Task.group_id.in_({group_id for group_id, _ in wanted}), Task.state == TaskState.Finished,
        Task.exit_status == 0, Task.result_msg.is_(None), Task.archived_at.is_not(None),
    )
    if not context.db.is_sqlite:
        query = query.with_for_update(read=True)
    newest: dict[tuple[int, str], tuple[int, uuid_module.UUID]] = {}
    for row in await session.execute(query):
        mark = (row.group_id, row.cache_key)
        if mark not in newest or row.id > newest[mark][0]:
            newest[mark] = (row.id, row.uuid)
    found: list[Keyed | None] = []
    for group_id, keyed in wanted:
        source = newest.get((group_id, keyed.key)) if keyed is not None and keyed.lookup else None
        found.append(Keyed(keyed.key, keyed.lookup, source[1]) if keyed is not None and source is not None else keyed)
    return found


async def share_artifacts(session: AsyncSession | Statements, hits: Sequence[tuple[uuid_module.UUID, uuid_module.UUID]]) -> None:
    """Give each hit (its uuid, its source's) artifact rows naming the source's objects, with their
    sizes and digests. A source's artifact stored before uploads had their own names gets its
    name written out first: objects are shared by ``object_key`` alone."""
    if not hits:
        return
    artifacts = Artifact.__table__
    sources = {source for _, source in hits}
    legacy = (await session.execute(
        sa.select(artifacts.c.id, artifacts.c.task_uuid, artifacts.c.content_type)
        .where(artifacts.c.task_uuid.in_(sources), artifacts.c.object_key.is_(None))
    )).all()
    for row in legacy:
        name = artifact_key(row.task_uuid, ArtifactContentType(row.content_type))
        await session.execute(artifacts.update().where(artifacts.c.id == row.id).values(object_key=name))
    copied = ("content_type", "size", "object_key", "digest", "created_at", "updated_at")
    for hit, source in hits:
        taken = sa.select(sa.literal(hit, sa.Uuid()), *(artifacts.c[name] for name in copied)).where(artifacts.c.task_uuid == source)
        await session.execute(artifacts.insert().from_select(["task_uuid", *copied], taken))
