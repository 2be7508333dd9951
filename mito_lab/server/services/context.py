"""What every service needs, built once at start and handed to each (jupyter_server style)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from mito_lab.config import CoordinatorConfig
from mito_lab.server.db.engine import Database, Statements
from mito_lab.server.db.models import Group
from mito_lab.server.events import InProcessEvents
from mito_lab.server.services.auth import Tokens
from mito_lab.server.storage import ObjectStore


@dataclass
class Context:
    config: CoordinatorConfig
    db: Database
    store: ObjectStore
    tokens: Tokens
    events: InProcessEvents
    closing: bool = False  # the coordinator is stopping: long polls answer now
    _group_names: dict[int, str] = field(default_factory=dict)
    _group_ids: dict[str, int] = field(default_factory=dict)

    async def group_name(self, session: AsyncSession | Statements, group_id: int) -> str:
        """Group names never change, so they are cached for the events' sake."""
        if group_id not in self._group_names:
            self.learn_group(group_id, await session.scalar(sa.select(Group.group_name).where(Group.id == group_id)) or "")
        return self._group_names[group_id]

    def learn_group(self, group_id: int, name: str) -> None:
        self._group_names[group_id] = name
        if name:
            self._group_ids[name] = group_id

    def known_group_id(self, name: str) -> int | None:
        """A group's id by its name, if this coordinator has met the group (``group_name``)."""
        return self._group_ids.get(name)

    @property
    def artifacts_bucket(self) -> str:
        return self.config.artifacts_bucket

    @property
    def attachments_bucket(self) -> str:
        return self.config.attachments_bucket
