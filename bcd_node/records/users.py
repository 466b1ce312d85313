"""Console users: create, list, disable, set passwords (argon2id), the first admin, sign-in with
lockout, self-registration and approval, roles, and API tokens (stored as salted hashes)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bcd_node.db.models import ApiToken, Role, User, UserState, utcnow
from bcd_node.errors import ValidationError
from bcd_node.records import audit, throttle

LOGGER = logging.getLogger(__name__)
MIN_PASSWORD_LENGTH = 12
_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
# argon2id with the library's RFC 9106 low-memory profile (64 MiB, 3 passes).
_HASHER = PasswordHasher()


class UserError(ValidationError):
    """A user command that cannot be carried out (bad name, weak password, unknown user)."""


class NameTaken(UserError):
    """The user name already has an account."""


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
    full_name = _full_name(full_name, role)
    exists = session.execute(select(User.id).where(User.username == username)).first()
    if exists:
        raise NameTaken(f"user {username!r} already exists")
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
    throttle.clear_name(session, username)
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
    """The result of :func:`authenticate`: the user, or None and why.

    ``reason`` is for the audit log only, except ``locked``: then ``locked_until`` says until
    when, and the caller may say so (it is the same for names with and without an account).
    """

    user: User | None
    reason: str = ""
    locked_until: datetime | None = None


def authenticate(session: Session, username: str, password: str, *, source: str = "",
                 actor_kind: str = "user", window_seconds: int = 300) -> LoginOutcome:
    """Check a username and password with lockout; failures are audited, the caller commits.

    A wrong password for a name counts towards its lockout (see :mod:`bcd_node.records.throttle`),
    whether an account has that name or not; while a name is locked every password is refused
    unchecked, so that a right guess reveals nothing. Pending and disabled accounts are refused
    even with the right password. A hash made with older parameters is replaced on success.
    Failures are audited per source in windows of ``window_seconds`` (:func:`audit.record_failure`).
    """
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    now = utcnow()

    def fail(reason: str, locked_until: datetime | None = None) -> LoginOutcome:
        audit.record_failure(session, action="login_failed", source=source,
                             actor=username[:64] or "?", actor_kind=actor_kind,
                             window_seconds=window_seconds, reason=reason,
                             object_ref=f"user:{username[:58]}")
        return LoginOutcome(None, reason, locked_until)

    locked = throttle.name_locked_until(session, username, now)
    if locked is not None:
        return fail("locked", locked)
    if not verify_password(user.password_hash if user is not None else _dummy_hash(), password):
        counted = throttle.count_name_failure(session, username, now)
        if counted.locked_until is not None:
            if user is not None:  # a lock of a name without an account is only counted
                audit.record(session, actor="system", actor_kind="system", source=source,
                             action="user_locked", object_ref=f"user:{username}",
                             details={"seconds": counted.seconds,
                                      "lockouts_in_a_row": counted.lockouts,
                                      "until": counted.locked_until.isoformat()})
            LOGGER.warning("sign-in locked for a user name for %d s after %d failed attempts "
                           "(lock %d in a row)", counted.seconds, throttle.LOCKOUT_THRESHOLD,
                           counted.lockouts)
            return fail("wrong password" if user is not None else "unknown user",
                        counted.locked_until)
        return fail("wrong password" if user is not None else "unknown user")
    assert user is not None  # the dummy hash matches no password
    if user.state == UserState.PENDING:
        return fail("pending approval")
    if user.state != UserState.ACTIVE:
        return fail("disabled")
    throttle.clear_name(session, username)
    user.last_login_at = now
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return LoginOutcome(user)


def unlock_user(session: Session, username: str, *, actor: str = "cli", actor_kind: str = "cli",
                source: str = "") -> bool:
    """Lift the sign-in lock of ``username`` (audited); return whether it was locked."""
    get_user(session, username)
    was_locked = throttle.clear_name(session, username)
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                 action="user_unlock", object_ref=f"user:{username}",
                 details={"was_locked": was_locked})
    LOGGER.info("sign-in lock of user %s lifted (was locked: %s)", username, was_locked)
    return was_locked


def register_doctor(session: Session, username: str, password: str, *, full_name: str = "",
                    email: str = "", source: str = "") -> User:
    """A doctor's self-registration: the account stays pending until an admin approves it.

    Raises
    ------
    NameTaken
        When the name has an account; the password has been hashed all the same, so that the
        answer takes as long as a registration (the caller must not tell the two apart).
    UserError
        For an invalid name or a weak password.
    """
    try:
        return add_user(session, username, password, Role.DOCTOR, full_name=full_name,
                        email=email, state=UserState.PENDING, actor=username, actor_kind="user",
                        source=source)
    except NameTaken:
        hash_password(password)
        raise


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
    throttle.clear_name(session, username)
    audit.record(session, actor=actor, actor_kind=actor_kind, source=source, action=action,
                 object_ref=f"user:{username}")
    LOGGER.info("user %s activated by %s", username, actor)
    return user


#: The longest full name (``users.full_name``).
MAX_FULL_NAME = 128
NO_FULL_NAME = ("a doctor needs a full name: it is printed on the reports they sign, as their "
                "signature (a login name is not one)")


def _full_name(full_name: str | None, role: Role) -> str:
    """A full name as stored (stripped); refused when too long, or empty for a doctor."""
    text = " ".join((full_name or "").split())
    if len(text) > MAX_FULL_NAME:
        raise UserError(f"the full name has {len(text)} characters; at most {MAX_FULL_NAME}")
    if role == Role.DOCTOR and not text:
        raise UserError(NO_FULL_NAME)
    return text


def set_full_name(session: Session, username: str, full_name: str, *, actor: str,
                  actor_kind: str = "user", source: str = "") -> User:
    """Change a user's full name (audited): the name the reports they sign give."""
    user = get_user(session, username)
    text = _full_name(full_name, user.role)
    if text != user.full_name:
        audit.record(session, actor=actor, actor_kind=actor_kind, source=source,
                     action="user_full_name", object_ref=f"user:{username}",
                     details={"from": user.full_name or "", "to": text})
        user.full_name = text
    return user


def set_role(session: Session, username: str, role: str | Role, *, actor: str,
             actor_kind: str = "user", source: str = "") -> User:
    """Change a user's role (audited); refuses to demote the last active admin, and to make a
    doctor of a user without a full name."""
    user = get_user(session, username)
    new = _role(role)
    if user.role == new:
        return user
    if new == Role.DOCTOR and not (user.full_name or "").strip():
        raise UserError(f"{username!r} has no full name; {NO_FULL_NAME}. Set it first.")
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
