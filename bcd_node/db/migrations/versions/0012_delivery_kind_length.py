"""deliveries: room for the longest kind of object ("verified_summary_pdf", 20 characters)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

``kind`` was 16 characters. SQLite stores longer strings in such a column as they are, so the
signed case's objects were queued there; PostgreSQL refused them, and signing a case there
failed ("value too long for type character varying(16)").
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=16),
                              type_=sa.String(length=32), existing_nullable=False)


def downgrade() -> None:
    # Rows of the longer kinds would not fit: downgrading keeps the wider column.
    pass
