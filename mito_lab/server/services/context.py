"""What every service needs, built once at start and handed to each (jupyter_server style)."""

from __future__ import annotations

from dataclasses import dataclass

from mito_lab.config import CoordinatorConfig
from mito_lab.server.db.engine import Database
from mito_lab.server.services.auth import Tokens
from mito_lab.server.storage import ObjectStore


@dataclass
class Context:
    config: CoordinatorConfig
    db: Database
    store: ObjectStore
    tokens: Tokens

    @property
    def artifacts_bucket(self) -> str:
        return self.config.artifacts_bucket

    @property
    def attachments_bucket(self) -> str:
        return self.config.attachments_bucket
