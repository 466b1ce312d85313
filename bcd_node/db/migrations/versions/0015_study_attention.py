"""studies: why an unsigned case needs the doctor's attention, for the worklist

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Cases before: None until their next change (the worklist still marks a low confidence
    # by the study's confidence).
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attention', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('attention')
