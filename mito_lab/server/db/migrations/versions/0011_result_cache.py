"""result caching: a task's cache key and, for a cache hit, the run it was answered from; the
content digest of artifacts and attachments (kept once a cache key needed it); artifacts looked
up by their object, which a hit shares with its source

Revision ID: 0011_result_cache
Revises: 0010_alerts
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_result_cache"
down_revision = "0010_alerts"
branch_labels = None
depends_on = None

KEYED = sa.text("cache_key IS NOT NULL")


def upgrade() -> None:
    op.add_column("tasks", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("tasks", sa.Column("cached_from", sa.Uuid(), nullable=True))
    op.create_index("ix_tasks_cache", "tasks", ["group_id", "cache_key", "id"], sqlite_where=KEYED, postgresql_where=KEYED)
    for table in ("artifacts", "attachments"):
        op.add_column(table, sa.Column("digest", sa.String(64), nullable=True))
    op.create_index("ix_artifacts_object_key", "artifacts", ["object_key"])


def downgrade() -> None:
    op.drop_index("ix_artifacts_object_key", "artifacts")
    for table in ("artifacts", "attachments"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("digest")
    op.drop_index("ix_tasks_cache", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("cached_from")
        batch.drop_column("cache_key")
