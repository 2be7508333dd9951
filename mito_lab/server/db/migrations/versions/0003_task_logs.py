"""live output of running tasks

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stream", sa.String(6), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    op.create_index("ix_task_logs_task_stream_offset", "task_logs", ["task_id", "stream", "offset"])


def downgrade() -> None:
    op.drop_index("ix_task_logs_task_stream_offset", "task_logs")
    op.drop_table("task_logs")
