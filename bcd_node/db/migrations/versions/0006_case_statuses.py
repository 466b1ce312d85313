"""case statuses: a study's status says what it means for the doctor

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

queued → analysing; done and needs_review → awaiting_review; verified (every field verified)
→ signed when the study summary is verified too, else awaiting_review: only the signature of
the study summary signs a case now. The next
change to a study recomputes its status by the new rule (bcd_node/records/cases.py).
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_UP = {'queued': 'analysing', 'done': 'awaiting_review', 'needs_review': 'awaiting_review',
       'verified': 'awaiting_review'}
_DOWN = {'awaiting_review': 'done', 'signed': 'verified', 'signed_corrected': 'verified'}


def _rename(mapping: dict[str, str]) -> None:
    for old, new in mapping.items():
        op.execute(f"UPDATE studies SET status = '{new}' WHERE status = '{old}'")


def upgrade() -> None:
    op.execute("UPDATE studies SET status = 'signed' WHERE status = 'verified' AND EXISTS "
               "(SELECT 1 FROM results WHERE results.study_fk = studies.id AND "
               "results.scope = 'study' AND results.verification = 'verified')")
    _rename(_UP)


def downgrade() -> None:
    _rename(_DOWN)
