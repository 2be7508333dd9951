"""the dispatch index in the claim's own order (priority descending, then id), so that taking the
best Ready tasks of a group reads them off the index instead of sorting every Ready task

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_dispatch", "tasks")
    op.create_index("ix_tasks_dispatch", "tasks", ["state", "group_id", sa.text("priority DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_dispatch", "tasks")
    op.create_index("ix_tasks_dispatch", "tasks", ["state", "group_id", "priority", "id"])
