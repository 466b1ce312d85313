"""Per-request database session and audit helper for the console."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request
from flask_login import current_user
from sqlalchemy.orm import Session

from bcd_node.records import audit
from bcd_node.runtime import NodeContext


def node() -> NodeContext:
    """The node this app serves."""
    return current_app.extensions["bcd_node"]


def db() -> Session:
    """The request's session (closed at the end of the request; views commit)."""
    if "db" not in g:
        g.db = node().session_factory()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    """Close the request's session, rolling back anything not committed."""
    session = g.pop("db", None)
    if session is not None:
        session.close()


def client_ip() -> str:
    """Where the request came from: the TCP peer, or behind ``web.trusted_proxies`` reverse
    proxies the address they forwarded (ProxyFix); other forwarded headers are ignored."""
    return request.remote_addr or ""


def actor() -> tuple[str, str]:
    """The audit actor of the request: (name, kind)."""
    api_user = g.get("api_user")
    if api_user is not None:
        return api_user.username, "api"
    if current_user.is_authenticated:
        return current_user.username, "user"
    return "anonymous", "user"


def audit_event(action: str, *, outcome: str = "success", patient_id: str = "",
                study_instance_uid: str = "", object_ref: str = "",
                details: dict[str, Any] | None = None, session: Session | None = None) -> None:
    """Append an audit event for the current user in ``session`` (the caller commits)."""
    name, kind = actor()
    audit.record(session or db(), actor=name, actor_kind=kind, action=action,
                 source=client_ip(), outcome=outcome, patient_id=patient_id or "",
                 study_instance_uid=study_instance_uid or "", object_ref=object_ref,
                 details=details)
