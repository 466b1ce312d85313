"""demonstration model: each result records whether its model was one

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows stay NULL: what their model was for is not recorded anywhere the database
    # can see. The console judges them by the configured model's manifest when its name and
    # version match, and as demonstration results otherwise (the safe side).
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('demonstration_model', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('demonstration_model')
