"""a worker's tasks by worker and archive moment, so that its held tasks (``archived_at IS NULL``)
are read off the index without the worker's history: the index on the worker alone made every
report read each task the worker had ever run

Revision ID: 0012_held_tasks_index
Revises: 0011_result_cache
"""

from alembic import op

revision = "0012_held_tasks_index"
down_revision = "0011_result_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_held", "tasks", ["assigned_worker_id", "archived_at"])
    op.drop_index("ix_tasks_assigned_worker_id", "tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_assigned_worker_id", "tasks", ["assigned_worker_id"])
    op.drop_index("ix_tasks_held", "tasks")
