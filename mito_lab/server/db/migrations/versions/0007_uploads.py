"""uploads commit on completion: every upload URL names an object of its own, recorded on the
artifact or attachment once it arrived whole; upload grants (for artifacts and, new, attachments)
are kept until their URL expires and say who may complete them

Revision ID: 0007_uploads
Revises: 0006
"""

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

import mito_lab.server.db.models

revision = "0007_uploads"
down_revision = "0006"
branch_labels = None
depends_on = None

# the upload URLs' lifetime: a grant from before this revision expires an hour after it was made
UPLOAD_URL_LIFETIME = timedelta(hours=1)


def _grant_columns() -> list[sa.Column]:
    return [
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("object_key", sa.String(1024), nullable=True),
        sa.Column("uploader_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("expires_at", mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    ]


def upgrade() -> None:
    op.add_column("artifacts", sa.Column("object_key", sa.String(1024), nullable=True))
    op.add_column("attachments", sa.Column("object_key", sa.String(1024), nullable=True))
    artifact_type = sa.Enum("result", "exec-log", "std-log", name="artifact_type", native_enum=False, length=32)
    # artifact_uploads loses its one-grant-per-artifact constraint: rebuilt, its rows copied
    old = sa.table(
        "artifact_uploads", sa.column("id", sa.Integer()), sa.column("task_uuid", sa.Uuid()), sa.column("content_type", artifact_type),
        sa.column("size", sa.BigInteger()), sa.column("created_at", mito_lab.server.db.models.UTCDateTime()),
        sa.column("updated_at", mito_lab.server.db.models.UTCDateTime()),
    )
    rows = [dict(row._mapping) for row in op.get_bind().execute(sa.select(old))]
    op.drop_table("artifact_uploads")
    new = op.create_table(
        "artifact_uploads",
        sa.Column("task_uuid", sa.Uuid(), nullable=False),
        sa.Column("content_type", artifact_type, nullable=False),
        *_grant_columns(),
    )
    op.create_index("ix_artifact_uploads_task", "artifact_uploads", ["task_uuid", "content_type"])
    if rows:
        op.bulk_insert(new, [{**row, "expires_at": row["created_at"] + UPLOAD_URL_LIFETIME, "recorded": False} for row in rows])
    op.create_table(
        "attachment_uploads",
        sa.Column("group_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("groups.id"), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        *_grant_columns(),
    )
    op.create_index("ix_attachment_uploads_key", "attachment_uploads", ["group_id", "key"])


def downgrade() -> None:
    op.drop_table("attachment_uploads")
    op.drop_index("ix_artifact_uploads_task", "artifact_uploads")
    op.drop_table("artifact_uploads")
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
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("object_key")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("object_key")
