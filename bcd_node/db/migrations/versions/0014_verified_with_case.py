"""results: a field verified with the signature of its case (its cells reviewed, its stage not)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Fields verified before were verified one by one, or (with rejected cells) with the case
    # under the old rule, which recorded the AI's stage as accepted: left as they were.
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verified_with', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('verified_with')
