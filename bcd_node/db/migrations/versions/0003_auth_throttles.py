"""auth throttles: per-source and per-name failure counters, aggregated audit failures

The lockout moves from two columns of ``users`` to ``auth_throttles`` rows keyed by the name as
typed, so that names without an account are locked out the same way.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('auth_throttles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lockouts', sa.Integer(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_throttles')),
    sa.UniqueConstraint('kind', 'key', name=op.f('uq_auth_throttles_kind'))
    )
    with op.batch_alter_table('auth_throttles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_throttles_updated_at'), ['updated_at'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_auth_throttles_window_end'), ['window_end'],
                              unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('locked_until')
        batch_op.drop_column('failed_logins')


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('locked_until', sa.DateTime(timezone=True),
                                      nullable=True))

    with op.batch_alter_table('auth_throttles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_throttles_window_end'))
        batch_op.drop_index(batch_op.f('ix_auth_throttles_updated_at'))

    op.drop_table('auth_throttles')
