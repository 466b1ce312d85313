"""results: why a result needs review, and the pixel size its analysis used

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier results keep no reasons and no scale: what their analysis assumed was not recorded.
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review_reasons', sa.JSON(), nullable=False,
                                      server_default='[]'))
        batch_op.add_column(sa.Column('um_per_pixel', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('scale_source', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('scale_source')
        batch_op.drop_column('um_per_pixel')
        batch_op.drop_column('review_reasons')
