"""what each committed run cost, as its worker measured it (wire.TaskUsage)

Revision ID: 0009_task_usage
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_task_usage"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = (("wall_seconds", sa.Float()), ("cpu_seconds", sa.Float()), ("max_rss", sa.BigInteger()), ("cores", sa.Float()), ("gpu_max_memory", sa.BigInteger()))


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("tasks", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
