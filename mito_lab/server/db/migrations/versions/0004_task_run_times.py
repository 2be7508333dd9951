"""when a task's current attempt started and when the task ended (durations in listings); an
index on updated_at (coordinators sharing a database notice each other's changes by it)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_tasks_updated_at", "tasks", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_updated_at", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("ended_at")
        batch.drop_column("started_at")
