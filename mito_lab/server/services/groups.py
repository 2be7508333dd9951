"""Groups, memberships and the role checks every other service relies on."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.models import Group, User, UserGroup
from mito_lab.server.errors import AlreadyExists, NotFound, PermissionDenied, QuotaExceeded
from mito_lab.server.services.context import Context
from mito_lab.wire import Role


async def group_by_name(session: AsyncSession, name: str) -> Group:
    group = await session.scalar(sa.select(Group).where(Group.group_name == name))
    if group is None:
        raise NotFound(f"User or group with name {name}")
    return group


async def role_in_group(session: AsyncSession, user: User, group_id: int) -> Role | None:
    return await session.scalar(
        sa.select(UserGroup.role).where(UserGroup.user_id == user.id, UserGroup.group_id == group_id)
    )


async def require_role(session: AsyncSession, user: User, group: Group, minimum: Role) -> Role:
    """The caller's role in ``group`` if it is at least ``minimum``; system admins pass as Admin."""
    if user.admin:
        return Role.Admin
    role = await role_in_group(session, user, group.id)
    if role is None:
        raise PermissionDenied(f"you are not a member of group {group.group_name}")
    if role.rank < minimum.rank:
        raise PermissionDenied(f"this needs role {minimum.value} in group {group.group_name}, you have {role.value}")
    return role


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


class GroupService:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def create(self, user: User, name: str) -> None:
        async with self.context.db.write() as session:
            if await name_taken(session, name):
                raise AlreadyExists(name)
            creator = await session.get_one(User, user.id)
            await add_group(session, creator, name)
