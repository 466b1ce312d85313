"""results: the amendment of a signed case (its reason, and the signature it replaces)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Results signed before were never amended: None.
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amends', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('amends')
