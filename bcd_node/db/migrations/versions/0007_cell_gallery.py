"""cell gallery: the probability map and cells of a result, the doctor's rejected cells

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing results keep NULL: they have no probability map and no listed cells, so the
    # gallery shows none for them (their counts stay the AI's).
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('probability_path', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('cells', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('corrected_seg_sop_instance_uid', sa.String(length=64),
                                      nullable=True))
    op.create_table(
        'cell_rejections',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('result_fk', sa.Integer(), nullable=False),
        sa.Column('cell_index', sa.Integer(), nullable=False),
        sa.Column('rejected_by_fk', sa.Integer(), nullable=True),
        sa.Column('rejected_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['rejected_by_fk'], ['users.id'],
                                name=op.f('fk_cell_rejections_rejected_by_fk_users')),
        sa.ForeignKeyConstraint(['result_fk'], ['results.id'], ondelete='CASCADE',
                                name=op.f('fk_cell_rejections_result_fk_results')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cell_rejections')),
        sa.UniqueConstraint('result_fk', 'cell_index', name='uq_cell_rejections_result_cell'),
    )
    with op.batch_alter_table('cell_rejections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cell_rejections_result_fk'), ['result_fk'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cell_rejections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cell_rejections_result_fk'))
    op.drop_table('cell_rejections')
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('corrected_seg_sop_instance_uid')
        batch_op.drop_column('cells')
        batch_op.drop_column('probability_path')
