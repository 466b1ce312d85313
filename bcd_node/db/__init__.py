"""Database: engine, models and migrations."""

from bcd_node.db.engine import make_engine, make_session_factory
from bcd_node.db.migrate import current_revision, head_revision, upgrade

__all__ = ["make_engine", "make_session_factory", "upgrade", "current_revision",
           "head_revision"]
