"""Users: the initial admin, creation, login and token checks."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.server.db.engine import Statements
from mito_lab.server.db.models import User, detached
from mito_lab.server.errors import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    WrongCredentials,
)
from mito_lab.server.services.activity import access_changed
from mito_lab.server.services.auth import hash_password, new_signature, unknown_user_hash, verify_password
from mito_lab.server.services.context import Context
from mito_lab.server.services.groups import add_group, apply_adjustment, name_taken
from mito_lab.server.services.login_backoff import LoginBackoff
from mito_lab.wire import UserState, md5_password

log = logging.getLogger(__name__)


_USERS = User.__table__
# built once: every authenticated request reads its user
_USER_BY_NAME = sa.select(*_USERS.columns).where(_USERS.c.username == sa.bindparam("name"))

CALLER_IDS_KEPT = 4096


@dataclass(frozen=True)
class Caller:
    """A user as their token names them, before the database said the token still holds: the
    statement that acts for them checks that as it writes (``CALLER_IS_CURRENT``), which ends a
    revoked access as surely as reading the user first would, for one round trip less on the
    submit's latency path. If that statement finds nothing, ``current_user`` says why."""

    user: User  # its id and name only, which never change: reading another column raises
    signature: int


# the check of ``authenticate`` (the user exists, is Active, and the token's signature is still
# theirs), for the statement that acts for a ``Caller``: binds caller_id and caller_signature
CALLER_IS_CURRENT = sa.exists().where(
    _USERS.c.id == sa.bindparam("caller_id"), _USERS.c.auth_signature == sa.bindparam("caller_signature"),
    _USERS.c.state == UserState.Active,
)


async def current_user(connection: Statements, username: str, signature: int) -> User:
    """The user, if a token of ``signature`` still lets them in (reference 6.1: existence, state,
    signature); else the error that says why not."""
    row = (await connection.execute(_USER_BY_NAME, {"name": username})).first()
    if row is None:
        raise WrongCredentials()
    user = detached(User, row._asdict())
    if user.state != UserState.Active:
        raise PermissionDenied(f"user {user.username} is {user.state.value}")
    if user.auth_signature != signature:
        raise WrongCredentials()
    return user


RetireWorkers = Callable[[AsyncSession, int], Awaitable[None]]
"""Shuts down every worker a user registered (the user's id), re-queueing their tasks."""


class UserService:
    def __init__(self, context: Context, retire_workers: RetireWorkers) -> None:
        """``retire_workers`` runs in the transaction that locks or deletes a user (SPEC 7, revocation)."""
        self.context = context
        self.retire_workers = retire_workers
        self.backoff = LoginBackoff(context.events)
        self._ids: OrderedDict[str, int] = OrderedDict()  # users' ids by name, for ``caller``

    async def ensure_admin(self) -> None:
        """Create the configured admin on first start; later config changes do not touch it.
        (And make the unknown users' hash now: the first login must cost what the others do.)"""
        await unknown_user_hash()
        config = self.context.config
        async with self.context.db.read() as session:
            exists = await session.scalar(sa.select(User.id).where(User.username == config.admin_user))
        if exists is None:
            try:
                await self.create(config.admin_user, bytes(md5_password(config.admin_password)), admin=True)
            except (AlreadyExists, IntegrityError):  # another coordinator starting at once created it
                log.info("admin user %s was created by another coordinator", config.admin_user)

    async def create(self, username: str, md5_digest: bytes, admin: bool) -> None:
        encrypted = await hash_password(md5_digest)
        async with self.context.db.write() as session:
            if await name_taken(session, username):
                raise AlreadyExists(username)
            # a signature from the start: concurrent first logins with retain then share it
            user = User(username=username, encrypted_password=encrypted, admin=admin, group_count=0, auth_signature=new_signature())
            session.add(user)
            await session.flush()
            await add_group(session, user, username)

    async def login(self, username: str, md5_digest: bytes, retain: bool, ip: str | None) -> str:
        """A token for the right password. A wrong one, for a real or an unknown user, costs the
        same hash and counts toward the name's and the address's back-off (``LoginBackoff``)."""
        await self.backoff.check(username, ip)
        async with self.context.db.read() as session:
            user = await session.scalar(sa.select(User).where(User.username == username))
        if not await verify_password(user.encrypted_password if user is not None else None, md5_digest) or user is None:
            await self.backoff.failed(username, ip)
            raise WrongCredentials()
        await self.backoff.succeeded(username)
        if user.state != UserState.Active:
            raise PermissionDenied(f"user {username} is {user.state.value}")
        async with self.context.db.write() as session:
            user = await session.get_one(User, user.id)
            if not retain or user.auth_signature is None:
                user.auth_signature = new_signature()
                access_changed(self.context, session, username)  # the user's other tokens just ended
            user.last_sign_in_at, user.last_sign_in_ip = user.current_sign_in_at, user.current_sign_in_ip
            user.current_sign_in_at, user.current_sign_in_ip = datetime.now(timezone.utc), ip
            signature = user.auth_signature
        return self.context.tokens.issue(
            username, "user", self.context.config.access_token_expires_in, sign=signature
        )

    async def authenticate(self, bearer: str) -> User:
        """The user behind a bearer token (reference 6.1: token, existence, state, signature)."""
        claims = self.context.tokens.verify(bearer, "user")
        async with self.context.db.lookup() as connection:
            return await current_user(connection, claims.sub, claims.sign)

    async def caller(self, bearer: str) -> Caller:
        """Who a bearer token names, for a statement that checks the rest as it acts. The first
        request of a name is authenticated in full (and refused at once if it should be)."""
        claims = self.context.tokens.verify(bearer, "user")
        user_id = self._ids.get(claims.sub)
        if user_id is None:
            user_id = self._ids[claims.sub] = (await self.authenticate(bearer)).id
            if len(self._ids) > CALLER_IDS_KEPT:
                self._ids.popitem(last=False)
        return Caller(detached(User, {"id": user_id, "username": claims.sub}), claims.sign)

    async def _token(self, username: str, signature: int) -> str:
        return self.context.tokens.issue(username, "user", self.context.config.access_token_expires_in, sign=signature)

    async def change_password(self, user: User, username: str, old_digest: bytes, new_digest: bytes) -> str:
        """Change one's own password; every other session of the user ends, the new token is returned."""
        if username != user.username or not await verify_password(user.encrypted_password, old_digest):
            raise WrongCredentials()
        encrypted = await hash_password(new_digest)
        async with self.context.db.write() as session:
            current = await session.get_one(User, user.id)
            current.encrypted_password, current.auth_signature = encrypted, new_signature()
            signature = current.auth_signature
            access_changed(self.context, session, username)
        return await self._token(username, signature)

    async def _by_name(self, session, username: str) -> User:  # type: ignore[no-untyped-def]
        user = await session.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"User {username}")
        return user

    async def set_password(self, username: str, new_digest: bytes) -> None:
        """An administrator resets a password; the user's sessions end."""
        encrypted = await hash_password(new_digest)
        async with self.context.db.write() as session:
            user = await self._by_name(session, username)
            user.encrypted_password, user.auth_signature = encrypted, new_signature()
            access_changed(self.context, session, username)

    async def set_state(self, username: str, state: UserState) -> UserState:
        """Locking or deleting a user also shuts down their workers: a lock is what stops an
        account now (it left, or was compromised), and a worker that stayed registered but was
        refused would hold its tasks Running until its heartbeats ran out. Unlocked, the user
        starts workers again (registering needs a login, which the lock refused)."""
        async with self.context.db.write() as session:
            user = await self._by_name(session, username)
            user.state = state
            if state != UserState.Active:
                await self.retire_workers(session, user.id)
            access_changed(self.context, session, username)
            return state

    async def adjust_group_quota(self, username: str, expression: str) -> int:
        async with self.context.db.write() as session:
            user = await self._by_name(session, username)
            user.group_quota = apply_adjustment(user.group_quota, expression)
            return user.group_quota
