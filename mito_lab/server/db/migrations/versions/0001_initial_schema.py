"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 18:04:25.532034
"""

import sqlalchemy as sa
from alembic import op

import mito_lab.server.db.models

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('artifacts',
    sa.Column('task_uuid', sa.Uuid(), nullable=False),
    sa.Column('content_type', sa.Enum('result', 'exec-log', 'std-log', name='artifact_type', native_enum=False, length=32), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task_uuid', 'content_type')
    )
    op.create_table('users',
    sa.Column('username', sa.String(length=255), nullable=False),
    sa.Column('encrypted_password', sa.Text(), nullable=False),
    sa.Column('auth_signature', sa.BigInteger(), nullable=True),
    sa.Column('current_sign_in_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sign_in_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('current_sign_in_ip', sa.String(length=64), nullable=True),
    sa.Column('last_sign_in_ip', sa.String(length=64), nullable=True),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('state', sa.Enum('Active', 'Locked', 'Deleted', name='user_state', native_enum=False, length=32), nullable=False),
    sa.Column('group_quota', sa.Integer(), nullable=False),
    sa.Column('group_count', sa.Integer(), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('groups',
    sa.Column('group_name', sa.String(length=255), nullable=False),
    sa.Column('creator_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.Enum('Active', 'Locked', 'Deleted', name='group_state', native_enum=False, length=32), nullable=False),
    sa.Column('task_count', sa.BigInteger(), nullable=False),
    sa.Column('storage_quota', sa.BigInteger(), nullable=False),
    sa.Column('storage_used', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['creator_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_name')
    )
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_groups_creator_id'), ['creator_id'], unique=False)

    op.create_table('workers',
    sa.Column('worker_id', sa.Uuid(), nullable=False),
    sa.Column('creator_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('Normal', 'GracefulShutdown', name='worker_state', native_enum=False, length=32), nullable=False),
    sa.Column('last_heartbeat', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['creator_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('worker_id')
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_creator_id'), ['creator_id'], unique=False)
        batch_op.create_index('ix_workers_state_heartbeat', ['state', 'last_heartbeat'], unique=False)

    op.create_table('attachments',
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_id', 'key')
    )
    op.create_table('group_worker',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('worker_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('role', sa.Enum('Read', 'Write', 'Admin', name='role', native_enum=False, length=32), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_id', 'worker_id')
    )
    with op.batch_alter_table('group_worker', schema=None) as batch_op:
        batch_op.create_index('ix_group_worker_group_role', ['group_id', 'role'], unique=False)
        batch_op.create_index(batch_op.f('ix_group_worker_worker_id'), ['worker_id'], unique=False)

    op.create_table('tasks',
    sa.Column('uuid', sa.Uuid(), nullable=False),
    sa.Column('creator_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('Pending', 'Ready', 'Running', 'Finished', 'Cancelled', 'Unknown', name='task_state', native_enum=False, length=32), nullable=False),
    sa.Column('assigned_worker_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('timeout', sa.Integer(), nullable=False, comment='seconds'),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('exit_status', sa.Integer(), nullable=True),
    sa.Column('result_msg', sa.Enum('FetchResourceTimeout', 'ExecTimeout', 'UploadResultTimeout', 'ResourceNotFound', 'ResourceForbidden', 'WatchTimeout', 'UserCancellation', 'SubmitNewTaskFailed', name='task_result_msg', native_enum=False, length=32), nullable=True),
    sa.Column('archived_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reporter_uuid', sa.Uuid(), nullable=True),
    sa.Column('upstream_task_uuid', sa.Uuid(), nullable=True),
    sa.Column('downstream_task_uuid', sa.Uuid(), nullable=True),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', mito_lab.server.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assigned_worker_id'], ['workers.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['creator_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_id', 'task_id'),
    sa.UniqueConstraint('uuid')
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_archived_at'), ['archived_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_assigned_worker_id'), ['assigned_worker_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_creator_id'), ['creator_id'], unique=False)
        batch_op.create_index('ix_tasks_dispatch', ['state', 'group_id', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_tasks_group_listing', ['group_id', 'id'], unique=False)

    op.create_table('user_group',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('role', sa.Enum('Read', 'Write', 'Admin', name='role', native_enum=False, length=32), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'group_id')
    )
    with op.batch_alter_table('user_group', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_group_group_id'), ['group_id'], unique=False)

    op.create_table('task_labels',
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('label', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'label')
    )
    with op.batch_alter_table('task_labels', schema=None) as batch_op:
        batch_op.create_index('ix_task_labels_label', ['label'], unique=False)

    op.create_table('task_tags',
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'tag')
    )
    with op.batch_alter_table('task_tags', schema=None) as batch_op:
        batch_op.create_index('ix_task_tags_tag', ['tag'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('task_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_task_tags_tag')

    op.drop_table('task_tags')
    with op.batch_alter_table('task_labels', schema=None) as batch_op:
        batch_op.drop_index('ix_task_labels_label')

    op.drop_table('task_labels')
    with op.batch_alter_table('user_group', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_group_group_id'))

    op.drop_table('user_group')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_group_listing')
        batch_op.drop_index('ix_tasks_dispatch')
        batch_op.drop_index(batch_op.f('ix_tasks_creator_id'))
        batch_op.drop_index(batch_op.f('ix_tasks_assigned_worker_id'))
        batch_op.drop_index(batch_op.f('ix_tasks_archived_at'))

    op.drop_table('tasks')
    with op.batch_alter_table('group_worker', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_worker_worker_id'))
        batch_op.drop_index('ix_group_worker_group_role')

    op.drop_table('group_worker')
    op.drop_table('attachments')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index('ix_workers_state_heartbeat')
        batch_op.drop_index(batch_op.f('ix_workers_creator_id'))

    op.drop_table('workers')
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_groups_creator_id'))

    op.drop_table('groups')
    op.drop_table('users')
    op.drop_table('artifacts')
