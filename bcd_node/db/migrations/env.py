"""Alembic environment: runs on the engine passed in by :mod:`bcd_node.db.migrate`."""

from alembic import context
from sqlalchemy import text

from bcd_node.db.models import Base

# Roles started together after an upgrade all apply the pending migrations: on PostgreSQL the
# first takes this lock, the others wait for its commit and then find nothing left to do.
MIGRATION_LOCK_KEY = 0x6263645F6D6967  # "bcd_mig"

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
