"""instance revisions: a changed image under a known SOP Instance UID gets new result UIDs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows are revision 0: their results keep the UIDs they were sent with.
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('revision', sa.Integer(), server_default='0',
                                      nullable=False))

    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instance_revision', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('supersedes', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('supersedes')
        batch_op.drop_column('instance_revision')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('revision')
        batch_op.drop_column('content_sha256')
