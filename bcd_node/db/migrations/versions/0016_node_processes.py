"""node_processes: each running process of the node and its roles, with its heartbeat

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'node_processes',
        sa.Column('id', sa.String(length=96), nullable=False),
        sa.Column('roles', sa.String(length=32), nullable=False),
        sa.Column('host', sa.String(length=64), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('node_processes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_processes_last_seen_at'), ['last_seen_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('node_processes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_processes_last_seen_at'))
    op.drop_table('node_processes')
