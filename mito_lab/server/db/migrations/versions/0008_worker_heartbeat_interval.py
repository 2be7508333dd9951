"""each worker's heartbeat interval, as it said when it registered (seconds; null when it did not
say): a worker silent for a few of its own intervals is removed, not only after the heartbeat timeout

Revision ID: 0008
Revises: 0007_uploads
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007_uploads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("heartbeat_interval", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("heartbeat_interval")
