"""output uploads handed to workers and not yet seen complete: recorded as artifacts (and charged)
only once the object is in the store with its declared size

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

import mito_lab.server.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact_uploads",
        sa.Column("task_uuid", sa.Uuid(), nullable=False),
        sa.Column("content_type", sa.Enum("result", "exec-log", "std-log", name="artifact_type", native_enum=False, length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_uuid", "content_type"),
    )


def downgrade() -> None:
    op.drop_table("artifact_uploads")
