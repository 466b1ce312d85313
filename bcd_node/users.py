"""Console users: create, list, disable, set passwords (argon2id), the first admin, sign-in with
lockout, self-registration and approval, roles, and API tokens (stored as salted hashes)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bcd_node import audit
from bcd_node.db.models import ApiToken, Role, User, UserState, utcnow

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


def any_users(session: Session) -> bool:
    """Whether any user account exists (whatever its state)."""
    return session.execute(select(User.id).limit(1)).first() is not None


def ensure_initial_admin(session: Session, env_password: str | None) -> InitialAdmin | None:
    """Create ``admin`` when there are no users at all; None when users already exist.

    The password is ``env_password`` (from ``BCD_ADMIN_PASSWORD``) or a random one that the
    caller prints once; there is no default password.
    """
    if any_users(session):
        return None
    password = env_password or generate_password()
    add_user(session, "admin", password, Role.ADMIN, full_name="Administrator",
             actor="system", actor_kind="system")
    return InitialAdmin("admin", None if env_password else password)


# --------------------------------------------------------------------------- console sign-in

#: Failed logins in a row after which an account is locked for :data:`LOCKOUT_SECONDS`.
LOCKOUT_THRESHOLD = 5
LOCKOUT_SECONDS = 15 * 60
_DUMMY: dict[int, str] = {}


def _dummy_hash() -> str:
    # A hash to verify against when the user does not exist, so both cases take the same time;
    # made on first use (not at import) with the hasher in use.
    key = id(_HASHER)
    if key not in _DUMMY:
        _DUMMY[key] = _HASHER.hash(secrets.token_urlsafe(16))
    return _DUMMY[key]


@dataclass(frozen=True)
class LoginOutcome:
    """The result of :func:`authenticate`: the user, or None and why (for the audit log only)."""

    user: User | None
    reason: str = ""


def authenticate(session: Session, username: str, password: str, *, source: str = "",
                 actor_kind: str = "user") -> LoginOutcome:
    """Check a username and password with lockout; failures are audited, the caller commits.

    A wrong password counts towards the lockout; :data:`LOCKOUT_THRESHOLD` failures in a row lock
    the account for :data:`LOCKOUT_SECONDS`. Locked, pending and disabled accounts are refused even
    with the right password. A hash made with older parameters is replaced on success.
    """
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    now = utcnow()

    def fail(reason: str) -> LoginOutcome:
        audit.record(session, actor=username[:64] or "?", actor_kind=actor_kind, source=source,
                     action="login_failed", outcome="failure", object_ref=f"user:{username[:58]}",
                     details={"reason": reason})
        return LoginOutcome(None, reason)

    if user is None:
        verify_password(_dummy_hash(), password)
        return fail("unknown user")
    if user.locked_until is not None and user.locked_until > now:
        return fail("locked")
    if not verify_password(user.password_hash, password):
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= LOCKOUT_THRESHOLD:
            user.locked_until = now + timedelta(seconds=LOCKOUT_SECONDS)
            user.failed_logins = 0
            audit.record(session, actor="system", actor_kind="system", source=source,
                         action="user_locked", object_ref=f"user:{username}",
                         details={"seconds": LOCKOUT_SECONDS})
            LOGGER.warning("user %s locked after %d failed logins", username, LOCKOUT_THRESHOLD)
        return fail("wrong password")
    if user.state == UserState.PENDING:
        return fail("pending approval")
    if user.state != UserState.ACTIVE:
        return fail("disabled")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return LoginOutcome(user)


def register_doctor(session: Session, username: str, password: str, *, full_name: str = "",
                    email: str = "", source: str = "") -> User:
    """A doctor's self-registration: the account stays pending until an admin approves it."""
    return add_user(session, username, password, Role.DOCTOR, full_name=full_name, email=email,
                    state=UserState.PENDING, actor=username, actor_kind="user", source=source)


def approve_user(session: Session, username: str, *, actor: str, actor_kind: str = "user",
                 source: str = "") -> User:
    """Activate a pending (or disabled) account (audited)."""
    user = get_user(session, username)
    if user.state == UserState.ACTIVE:
        raise UserError(f"user {username!r} is already active")
    action = "user_approve" if user.state == UserState.PENDING else "user_enable"
    user.state = UserState.ACTIVE
    user.approved_by = actor[:64]
    user.approved_at = utcnow()
    user.failed_logins = 0
    user.locked_until = None
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source, action=action,
                 object_ref=f"user:{username}")
    LOGGER.info("user %s activated by %s", username, actor)
    return user


def set_role(session: Session, username: str, role: str | Role, *, actor: str,
             actor_kind: str = "user", source: str = "") -> User:
    """Change a user's role (audited); refuses to demote the last active admin."""
    user = get_user(session, username)
    new = _role(role)
    if user.role == new:
        return user
    if user.role == Role.ADMIN and user.state == UserState.ACTIVE and _active_admins(session) <= 1:
        raise UserError(f"{username!r} is the last active admin; add another admin first")
    old = user.role
    user.role = new
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source, action="user_role",
                 object_ref=f"user:{username}", details={"from": old.value, "to": new.value})
    return user


def reset_password(session: Session, username: str, *, actor: str, actor_kind: str = "user",
                   source: str = "") -> str:
    """Give a user a new random password (audited) and return it to show once."""
    password = generate_password()
    set_password(session, username, password, actor=actor, actor_kind=actor_kind, source=source)
    return password


# --------------------------------------------------------------------------- API tokens

TOKEN_PREFIX = "bcd_"


def token_hash(salt: str, token: str) -> str:
    """The stored form of an API token: HMAC-SHA256 keyed with the node's token salt."""
    return hmac.new(salt.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).hexdigest()


def issue_token(session: Session, username: str, name: str, salt: str, *, actor: str,
                actor_kind: str = "user", source: str = "") -> tuple[ApiToken, str]:
    """Create an API token for an active user (audited); return it and its text to show once."""
    user = get_user(session, username)
    if user.state != UserState.ACTIVE:
        raise UserError(f"user {username!r} is not active")
    name = name.strip()
    if not name or len(name) > 64:
        raise UserError("token name: 1-64 characters")
    prefix = secrets.token_hex(4)
    text = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(user_fk=user.id, name=name, prefix=prefix, token_hash=token_hash(salt, text),
                     created_by=actor[:64])
    session.add(token)
    session.flush()
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source, action="token_issue",
                 object_ref=f"token:{token.id}", details={"user": username, "name": name,
                                                          "prefix": prefix})
    return token, text


def revoke_token(session: Session, token_id: int, *, actor: str, actor_kind: str = "user",
                 source: str = "") -> ApiToken:
    """Revoke an API token (audited)."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise UserError(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                     action="token_revoke", object_ref=f"token:{token.id}",
                     details={"user": token.user.username, "prefix": token.prefix})
    return token


def find_token(session: Session, salt: str, text: str) -> ApiToken | None:
    """The live token whose text is ``text`` (not revoked, its user active), or None."""
    if not text.startswith(TOKEN_PREFIX):
        return None
    token = session.execute(select(ApiToken).where(
        ApiToken.token_hash == token_hash(salt, text))).scalar_one_or_none()
    if token is None or token.revoked_at is not None or token.user.state != UserState.ACTIVE:
        return None
    token.last_used_at = utcnow()
    return token
