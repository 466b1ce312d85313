"""storage commitment: a delivery waits for the destination to commit what it stored

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows were delivered (or are waiting) without commitment: both columns stay NULL.
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('commit_transaction_uid', sa.String(length=64),
                                      nullable=True))
        batch_op.add_column(sa.Column('committed_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index('ix_deliveries_commit_transaction_uid',
                              ['commit_transaction_uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_commit_transaction_uid')
        batch_op.drop_column('committed_at')
        batch_op.drop_column('commit_transaction_uid')
