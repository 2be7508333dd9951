"""attempt counter, latest exec state and cancel requests on tasks

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EXEC_STATES = (
    "WorkerExited", "FetchResource", "FetchResourceFinished", "FetchResourceError", "FetchResourceTimeout",
    "FetchResourceNotFound", "FetchResourceForbidden", "Watch", "WatchFinished", "WatchTimeout", "ExecPending",
    "ExecSpawned", "ExecFinished", "ExecTimeout", "UploadResult", "UploadFinishedResult", "UploadCancelledResult",
    "UploadResultFinished", "UploadResultTimeout", "TaskCommitted", "Unknown",
)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"))
        batch.add_column(sa.Column("exec_state", sa.Enum(*EXEC_STATES, name="task_exec_state", native_enum=False, length=32), nullable=True))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for column in ("cancel_requested", "exec_state", "max_attempts", "attempts"):
            batch.drop_column(column)
