"""Groups, memberships and the role checks every other service relies on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.config import parse_size
from mito_lab.server.db.engine import Statements
from mito_lab.server.db.models import Group, GroupWorker, User, UserGroup, Worker, detached
from mito_lab.server.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
)
from mito_lab.server.services.activity import access_changed
from mito_lab.server.services.context import Context
from mito_lab.wire import INT32_MAX, MAX_SIZE, GroupQueryInfo, GroupState, Role, WorkerState


def apply_adjustment(current: int, expression: str, parse: Callable[[str], int] = int, maximum: int = INT32_MAX) -> int:
    """``"N"``/``"=N"`` sets, ``"+N"`` adds, ``"-N"`` subtracts (N read by ``parse``); never below 0,
    never above ``maximum`` (what the column holds)."""
    text = expression.strip()
    sign, amount = (text[0], text[1:]) if text and text[0] in "+-=" else ("=", text)
    try:
        value = parse(amount.strip())
    except ValueError as exc:
        raise InvalidRequest(f"invalid adjustment {expression!r}: use N, =N, +N or -N ({exc})") from None
    if value < 0:
        raise InvalidRequest(f"invalid adjustment {expression!r}: use N, =N, +N or -N")
    adjusted = max(0, {"=": value, "+": current + value, "-": current - value}[sign])
    if adjusted > maximum:
        raise InvalidRequest(f"invalid adjustment {expression!r}: the result is over {maximum}")
    return adjusted


async def group_by_name(session: AsyncSession, name: str) -> Group:
    group = await session.scalar(sa.select(Group).where(Group.group_name == name))
    if group is None:
        raise NotFound(f"User or group with name {name}")
    return group


async def role_in_group(session: AsyncSession, user: User, group_id: int) -> Role | None:
    return await session.scalar(
        sa.select(UserGroup.role).where(UserGroup.user_id == user.id, UserGroup.group_id == group_id)
    )


async def require_role(session: AsyncSession, user: User | None, group: Group, minimum: Role) -> Role:
    """The caller's role in ``group`` if it is at least ``minimum``.

    System administrators get no pass here: their powers come only through the ``/admin`` routes,
    which call services with ``user=None`` (already authorised, acting on any group)."""
    if user is None:
        return Role.Admin
    return _sufficient(await role_in_group(session, user, group.id), group, minimum)


def _sufficient(role: Role | None, group: Group, minimum: Role) -> Role:
    if role is None:
        raise PermissionDenied(f"you are not a member of group {group.group_name}")
    if role.rank < minimum.rank:
        raise PermissionDenied(f"this needs role {minimum.value} in group {group.group_name}, you have {role.value}")
    return role


# built once: a submit's group and role are read on every call, and building the statement cost
# more than running it on SQLite. Columns, not the entity: it serves sessions and the hot path's
# Core connections alike.
_GROUP_COLUMNS = Group.__table__.columns
_GROUP_AND_ROLE = (
    sa.select(*_GROUP_COLUMNS, UserGroup.role)
    .outerjoin(UserGroup, sa.and_(UserGroup.group_id == Group.id, UserGroup.user_id == sa.bindparam("user_id")))
    .where(Group.group_name == sa.bindparam("name"))
)


async def group_with_role(session: AsyncSession | Statements, user: User, name: str | None, minimum: Role) -> Group:
    """The named group (the caller's personal group when no name is given) if the caller's role
    in it is at least ``minimum``: one statement reads both. The group is detached: a session
    that changes it reads it again (``locked_group``)."""
    row = (await session.execute(_GROUP_AND_ROLE, {"user_id": user.id, "name": name or user.username})).first()
    if row is None:
        raise NotFound(f"User or group with name {name or user.username}")
    group = detached(Group, {column.key: getattr(row, column.key) for column in _GROUP_COLUMNS})
    _sufficient(row.role, group, minimum)
    return group


SERVING_ROLES = Role.Write.and_above()
"""A worker's roles in a group that hand it the group's tasks."""


def may_take(worker_pk: sa.ColumnElement[Any], group_id: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """The worker may take a task of the group now: it is Normal, and serves the group. Checked
    in the statement that takes the task, never from what a coordinator holds in memory: a group
    taken off the worker (revocation) stops its claims at once on every coordinator. One probe of
    group_worker's unique (group_id, worker_id) index."""
    return sa.and_(
        sa.exists().where(Worker.id == worker_pk, Worker.state == WorkerState.Normal),
        sa.exists().where(GroupWorker.worker_id == worker_pk, GroupWorker.group_id == group_id, GroupWorker.role.in_(SERVING_ROLES)),
    )


async def require_grant(session: AsyncSession, user: User | None, group: Group, role: Role) -> None:
    """Giving a worker a role in ``group`` hands it the group's tasks: that needs Write in the
    group, and Admin to grant Admin (SPEC 4.5)."""
    await require_role(session, user, group, Role.Admin if role is Role.Admin else Role.Write)


async def name_taken(session: AsyncSession, name: str) -> bool:
    """Users and groups share one namespace (every user has a personal group of the same name)."""
    user = await session.scalar(sa.select(User.id).where(User.username == name))
    group = await session.scalar(sa.select(Group.id).where(Group.group_name == name))
    return user is not None or group is not None


async def add_group(session: AsyncSession, creator: User, name: str) -> Group:
    """Create a group with ``creator`` as Admin, counting it against the creator's group quota.
    The caller has checked that the name is free."""
    if creator.group_count >= creator.group_quota:
        raise QuotaExceeded()
    creator.group_count += 1
    group = Group(group_name=name, creator_id=creator.id)
    session.add(group)
    await session.flush()
    session.add(UserGroup(user_id=creator.id, group_id=group.id, role=Role.Admin))
    return group


def require_room(group: Group, old_size: int, new_size: int) -> None:
    """An object of ``group`` may go from ``old_size`` to ``new_size`` bytes (0 = absent): growth
    must fit in the storage quota (403); shrinking is always allowed."""
    if new_size and group.state != GroupState.Active:  # deleting is always allowed
        raise InvalidRequest(f"group {group.group_name} is {group.state.value}")
    growth = new_size - old_size
    if growth > 0 and group.storage_used + growth > group.storage_quota:
        raise QuotaExceeded()


async def charge_storage(session: AsyncSession, group: Group, old_size: int, new_size: int) -> None:
    """Account an object of ``group`` going from ``old_size`` to ``new_size`` bytes (``require_room``)."""
    require_room(group, old_size, new_size)
    group.storage_used = max(0, group.storage_used + new_size - old_size)


async def locked_group(context: Context, session: AsyncSession, group_id: int) -> Group:
    """The group row, locked on PostgreSQL so that concurrent uploads account correctly."""
    return await session.get_one(Group, group_id, with_for_update=not context.db.is_sqlite)


async def by_names(session: AsyncSession, column: Any, names: list[str], what: str) -> dict[str, Any]:
    """The rows whose ``column`` (``User.username``, ``Group.group_name``) is one of ``names``; all
    must exist (400 "Some users do not exist: ..." otherwise, as the reference)."""
    rows = (await session.scalars(sa.select(column.class_).where(column.in_(names)))).all()
    found = {getattr(row, column.key): row for row in rows}
    missing = sorted(set(names) - set(found))
    if missing:
        raise InvalidRequest(f"Some {what} do not exist: {', '.join(missing)}")
    return found


RevokeLinks = Callable[[AsyncSession, Group, Collection[int]], Awaitable[None]]
"""Drops the links to a group of the workers of the given users that no longer hold Write in it."""


class GroupService:
    def __init__(self, context: Context, revoke_links: RevokeLinks) -> None:
        """``revoke_links`` runs in the transaction of every membership change (SPEC 7, revocation)."""
        self.context = context
        self.revoke_links = revoke_links

    async def create(self, user: User, name: str) -> None:
        async with self.context.db.write() as session:
            if await name_taken(session, name):
                raise AlreadyExists(name)
            creator = await session.get_one(User, user.id)
            await add_group(session, creator, name)

    async def my_groups(self, user: User) -> dict[str, Role]:
        async with self.context.db.read() as session:
            rows = await session.execute(
                sa.select(Group.group_name, UserGroup.role)
                .join(UserGroup, UserGroup.group_id == Group.id)
                .where(UserGroup.user_id == user.id)
                .order_by(Group.group_name)
            )
            return {name: role for name, role in rows.all()}

    async def info(self, user: User, name: str) -> GroupQueryInfo:
        async with self.context.db.read() as session:
            group = await group_by_name(session, name)
            role = await require_role(session, user, group, Role.Read)
            creator = await session.get_one(User, group.creator_id)
            workers = await session.scalar(sa.select(sa.func.count()).where(GroupWorker.group_id == group.id))
            members = None
            if role == Role.Admin:  # only administrators see who is in the group
                rows = await session.execute(
                    sa.select(User.username, UserGroup.role)
                    .join(UserGroup, UserGroup.user_id == User.id)
                    .where(UserGroup.group_id == group.id)
                    .order_by(User.username)
                )
                members = {username: member_role for username, member_role in rows.all()}
            return GroupQueryInfo(
                group_name=group.group_name,
                creator_username=creator.username,
                created_at=group.created_at,
                updated_at=group.updated_at,
                state=group.state,
                task_count=group.task_count,
                storage_quota=group.storage_quota,
                storage_used=group.storage_used,
                worker_count=workers or 0,
                users_in_group=members,
            )

    async def set_members(self, user: User, name: str, relations: dict[str, Role]) -> None:
        """Add members or change their roles (group Admins only)."""
        async with self.context.db.write() as session:
            group = await group_by_name(session, name)
            await require_role(session, user, group, Role.Admin)
            users = await by_names(session, User.username, list(relations), "users")
            current = {
                m.user_id: m for m in (await session.scalars(sa.select(UserGroup).where(UserGroup.group_id == group.id))).all()
            }
            for username, role in relations.items():
                member = current.get(users[username].id)
                if member is None:
                    session.add(UserGroup(user_id=users[username].id, group_id=group.id, role=role))
                    access_changed(self.context, session, username, joined=group.group_name)
                else:
                    member.role = role
            await self._keep_an_admin(session, group)
            await self.revoke_links(session, group, [user.id for user in users.values()])  # those now Read

    async def remove_members(self, user: User, name: str, usernames: list[str]) -> None:
        async with self.context.db.write() as session:
            group = await group_by_name(session, name)
            await require_role(session, user, group, Role.Admin)
            users = await by_names(session, User.username, usernames, "users")
            await session.execute(
                sa.delete(UserGroup).where(
                    UserGroup.group_id == group.id, UserGroup.user_id.in_([u.id for u in users.values()])
                )
            )
            await self._keep_an_admin(session, group)
            await self.revoke_links(session, group, [user.id for user in users.values()])
            for username in users:
                access_changed(self.context, session, username)

    @staticmethod
    async def _keep_an_admin(session: AsyncSession, group: Group) -> None:
        """A group without an Admin could never be managed again: refuse the change that causes it."""
        await session.flush()
        admins = await session.scalar(
            sa.select(sa.func.count()).where(UserGroup.group_id == group.id, UserGroup.role == Role.Admin)
        )
        if not admins:
            raise InvalidRequest(f"group {group.group_name} must keep at least one Admin")

    async def adjust_storage_quota(self, name: str, expression: str) -> int:
        """Administrators set or change a group's storage quota (sizes like ``+1GB``, ``=500MB``)."""
        async with self.context.db.write() as session:
            group = await session.scalar(sa.select(Group).where(Group.group_name == name))
            if group is None:
                raise NotFound(f"Group {name}")
            group.storage_quota = apply_adjustment(group.storage_quota, expression, parse_size, MAX_SIZE)
            return group.storage_quota
