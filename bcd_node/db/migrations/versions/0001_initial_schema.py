"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('actor_kind', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('object_ref', sa.String(length=255), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('hash', name=op.f('uq_audit_events_hash'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_actor'), ['actor'], unique=False)
        batch_op.create_index('ix_audit_events_at', ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_patient_id'), ['patient_id'], unique=False)

    op.create_table('destination_health',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('last_echo_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_echo_ok', sa.Boolean(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_destination_health'))
    )
    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=324), nullable=False),
    sa.Column('birth_date', sa.String(length=8), nullable=False),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', 'issuer', name='uq_patients_id_issuer')
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patients_patient_id'), ['patient_id'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.Enum('admin', 'doctor', name='role', native_enum=False, length=32), nullable=False),
    sa.Column('state', sa.Enum('pending', 'active', 'disabled', name='userstate', native_enum=False, length=32), nullable=False),
    sa.Column('full_name', sa.String(length=128), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('password_changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_fk', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_fk'], ['users.id'], name=op.f('fk_api_tokens_user_fk_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_prefix'), ['prefix'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_tokens_user_fk'), ['user_fk'], unique=False)

    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.Column('referring_physician', sa.String(length=324), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('summary_done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], name=op.f('fk_studies_patient_fk_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_studies_last_received_at', ['last_received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_fk'), ['patient_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_stage'), ['stage'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_date'), ['study_date'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_series_study_fk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_fk'), ['study_fk'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_fk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('columns', sa.Integer(), nullable=False),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_fk'], ['series.id'], name=op.f('fk_instances_series_fk_series'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_series_fk'), ['series_fk'], unique=False)

    op.create_table('results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('instance_fk', sa.Integer(), nullable=True),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('probabilities', sa.JSON(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('blast_count', sa.Integer(), nullable=False),
    sa.Column('blast_area_fraction', sa.Float(), nullable=False),
    sa.Column('quality', sa.JSON(), nullable=False),
    sa.Column('needs_review', sa.Boolean(), nullable=False),
    sa.Column('mask_path', sa.String(length=255), nullable=True),
    sa.Column('overlay_path', sa.String(length=255), nullable=True),
    sa.Column('pdf_path', sa.String(length=255), nullable=True),
    sa.Column('seg_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('pdf_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('verification', sa.String(length=16), nullable=False),
    sa.Column('verified_by_fk', sa.Integer(), nullable=True),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_stage', sa.String(length=32), nullable=True),
    sa.Column('verified_comment', sa.Text(), nullable=True),
    sa.Column('verified_sr_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('verified_pdf_path', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_fk'], ['instances.id'], name=op.f('fk_results_instance_fk_instances'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_results_study_fk_studies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['verified_by_fk'], ['users.id'], name=op.f('fk_results_verified_by_fk_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_results'))
    )
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_results_instance_fk'), ['instance_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_results_study_fk'), ['study_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_results_verification'), ['verification'], unique=False)

    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('result_fk', sa.Integer(), nullable=True),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=255), nullable=False),
    sa.Column('state', sa.Enum('pending', 'sending', 'done', 'dead', name='deliverystate', native_enum=False, length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['result_fk'], ['results.id'], name=op.f('fk_deliveries_result_fk_results'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('destination', 'sop_instance_uid', name='uq_deliveries_dest_sop')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_result_fk'), ['result_fk'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('analyze', 'study_summary', 'verified_report', name='jobkind', native_enum=False, length=32), nullable=False),
    sa.Column('state', sa.Enum('queued', 'running', 'done', 'failed', name='jobstate', native_enum=False, length=32), nullable=False),
    sa.Column('instance_fk', sa.Integer(), nullable=True),
    sa.Column('study_fk', sa.Integer(), nullable=True),
    sa.Column('result_fk', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_fk'], ['instances.id'], name=op.f('fk_jobs_instance_fk_instances'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['result_fk'], ['results.id'], name=op.f('fk_jobs_result_fk_results'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], name=op.f('fk_jobs_study_fk_studies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_claim', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_instance_fk'), ['instance_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_study_fk'), ['study_fk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_study_fk'))
        batch_op.drop_index(batch_op.f('ix_jobs_instance_fk'))
        batch_op.drop_index('ix_jobs_claim')

    op.drop_table('jobs')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_result_fk'))
        batch_op.drop_index('ix_deliveries_due')

    op.drop_table('deliveries')
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_results_verification'))
        batch_op.drop_index(batch_op.f('ix_results_study_fk'))
        batch_op.drop_index(batch_op.f('ix_results_instance_fk'))

    op.drop_table('results')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_fk'))
        batch_op.drop_index(batch_op.f('ix_instances_received_at'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_fk'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_study_date'))
        batch_op.drop_index(batch_op.f('ix_studies_status'))
        batch_op.drop_index(batch_op.f('ix_studies_stage'))
        batch_op.drop_index(batch_op.f('ix_studies_patient_fk'))
        batch_op.drop_index('ix_studies_last_received_at')
        batch_op.drop_index(batch_op.f('ix_studies_created_at'))
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))

    op.drop_table('studies')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_fk'))
        batch_op.drop_index(batch_op.f('ix_api_tokens_prefix'))

    op.drop_table('api_tokens')
    op.drop_table('users')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patients_patient_id'))

    op.drop_table('patients')
    op.drop_table('destination_health')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_patient_id'))
        batch_op.drop_index('ix_audit_events_at')
        batch_op.drop_index(batch_op.f('ix_audit_events_actor'))
        batch_op.drop_index(batch_op.f('ix_audit_events_action'))

    op.drop_table('audit_events')
