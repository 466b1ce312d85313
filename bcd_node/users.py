"""Console users: create, list, disable, set passwords (argon2id), and the first admin."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bcd_node import audit
from bcd_node.db.models import Role, User, UserState, utcnow

LOGGER = logging.getLogger(__name__)
MIN_PASSWORD_LENGTH = 12
_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
# argon2id with the library's RFC 9106 low-memory profile (64 MiB, 3 passes).
_HASHER = PasswordHasher()


class UserError(ValueError):
    """A user command that cannot be carried out (bad name, weak password, unknown user)."""


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (never raises on a mismatch)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with older parameters and should be replaced at next login."""
    return _HASHER.check_needs_rehash(password_hash)


def check_password_strength(password: str, username: str = "") -> None:
    """Refuse passwords that are too short or equal to the user name."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if username and password.lower() == username.lower():
        raise UserError("password must not be the user name")


def generate_password() -> str:
    """A random password for the first admin or a reset (about 96 bits)."""
    return secrets.token_urlsafe(16)


def _role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}: expected admin or doctor") from None


def get_user(session: Session, username: str) -> User:
    """The user called ``username``; :class:`UserError` if there is none."""
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def add_user(session: Session, username: str, password: str, role: str | Role, *,
             full_name: str = "", email: str = "", state: UserState = UserState.ACTIVE,
             actor: str = "cli", actor_kind: str = "cli", source: str = "") -> User:
    """Create a user (audited); the caller commits."""
    if not _USERNAME_RE.match(username):
        raise UserError(f"invalid user name {username!r}: 2-64 lower-case letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit")
    check_password_strength(password, username)
    role = _role(role)
    exists = session.execute(select(User.id).where(User.username == username)).first()
    if exists:
        raise UserError(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role,
                state=state, full_name=full_name, email=email)
    session.add(user)
    session.flush()
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source, action="user_add",
                 object_ref=f"user:{username}", details={"role": role.value, "state": state.value})
    LOGGER.info("user %s added with role %s", username, role.value)
    return user


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.execute(select(User).order_by(User.username)).scalars())


def disable_user(session: Session, username: str, *, actor: str = "cli",
                 actor_kind: str = "cli", source: str = "") -> User:
    """Disable a user (audited); refuses to disable the last active admin."""
    user = get_user(session, username)
    if user.role == Role.ADMIN and user.state == UserState.ACTIVE and _active_admins(session) <= 1:
        raise UserError(f"{username!r} is the last active admin; add another admin first")
    user.state = UserState.DISABLED
    for token in user.tokens:
        if token.revoked_at is None:
            token.revoked_at = utcnow()
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="user_disable", object_ref=f"user:{username}")
    LOGGER.info("user %s disabled", username)
    return user


def set_password(session: Session, username: str, password: str, *, actor: str = "cli",
                 actor_kind: str = "cli", source: str = "") -> User:
    """Set a user's password (audited) and clear any lockout."""
    user = get_user(session, username)
    check_password_strength(password, username)
    user.password_hash = hash_password(password)
    user.password_changed_at = utcnow()
    user.failed_logins = 0
    user.locked_until = None
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="user_set_password", object_ref=f"user:{username}")
    LOGGER.info("password of user %s set", username)
    return user


def _active_admins(session: Session) -> int:
    return session.execute(select(func.count()).select_from(User).where(
        User.role == Role.ADMIN, User.state == UserState.ACTIVE)).scalar_one()


@dataclass(frozen=True)
class InitialAdmin:
    """The admin created on first start; ``password`` is None when it came from the environment."""

    username: str
    password: str | None


def ensure_initial_admin(session: Session, env_password: str | None) -> InitialAdmin | None:
    """Create ``admin`` when there are no users at all; None when users already exist.

    The password is ``env_password`` (from ``BCD_ADMIN_PASSWORD``) or a random one that the
    caller prints once; there is no default password.
    """
    if session.execute(select(func.count()).select_from(User)).scalar_one() > 0:
        return None
    password = env_password or generate_password()
    add_user(session, "admin", password, Role.ADMIN, full_name="Administrator",
             actor="system", actor_kind="system")
    return InitialAdmin("admin", None if env_password else password)
