"""campaign alerts: webhooks notified when a label's runs are done or their failures pass a threshold

Revision ID: 0010_alerts
Revises: 0009_task_usage
"""

import sqlalchemy as sa
from alembic import op

import mito_lab.server.db.models

revision = "0010_alerts"
down_revision = "0009_task_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    moment = mito_lab.server.db.models.UTCDateTime(timezone=True)
    op.create_table(
        "alerts",
        sa.Column("group_id", key, sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
        sa.Column("creator_id", key, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=True),
        sa.Column("failure_share", sa.Float(), nullable=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(1024), nullable=False),
        sa.Column("done_mark", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failures_mark", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fired_at", moment, nullable=True),
        sa.Column("last_event", sa.Enum("done", "failures", name="alert_event", native_enum=False, length=32), nullable=True),
        sa.Column("delivery", sa.String(1024), nullable=True),
        sa.Column("id", key, nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("updated_at", moment, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_group_label", "alerts", ["group_id", "label"])


def downgrade() -> None:
    op.drop_index("ix_alerts_group_label", table_name="alerts")
    op.drop_table("alerts")
