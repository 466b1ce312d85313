"""User commands, argon2id passwords, the first admin, secrets and the audit chain."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bcd_node.cli import main
from bcd_node.db.models import AuditEvent, User, UserState
from bcd_node.node.serve import bootstrap_admin
from bcd_node.records.audit import verify_chain
from bcd_node.records.users import verify_password
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from bcd_node.store.secrets import ensure_secrets


@pytest.fixture
def cfg(write_config) -> Path:
    return write_config()


def run(cfg: Path, *args: str, stdin: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--config", str(cfg), *args])


def users(cfg: Path) -> dict[str, User]:
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory() as session:
        return {u.username: u for u in session.execute(select(User)).scalars()}


def test_users_add_list_disable_set_password(cfg, capsys, monkeypatch) -> None:
    assert run(cfg, "users", "add", "dr.house", "--role", "doctor", "--full-name", "G House",
               "--password-stdin", stdin="vicodin-and-lupus\n", monkeypatch=monkeypatch) == 0
    assert run(cfg, "users", "add", "root2", "--role", "admin", "--password-stdin",
               stdin="another-long-secret\n", monkeypatch=monkeypatch) == 0
    u = users(cfg)
    assert u["dr.house"].role.value == "doctor"
    assert u["dr.house"].password_hash.startswith("$argon2id$")
    assert "vicodin" not in u["dr.house"].password_hash
    assert verify_password(u["dr.house"].password_hash, "vicodin-and-lupus")

    capsys.readouterr()
    assert run(cfg, "users", "list", "--json") == 0
    listed = {r["username"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["dr.house"]["state"] == "active" and listed["root2"]["role"] == "admin"

    assert run(cfg, "users", "set-password", "dr.house", "--password-stdin",
               stdin="a-brand-new-password\n", monkeypatch=monkeypatch) == 0
    u = users(cfg)
    assert verify_password(u["dr.house"].password_hash, "a-brand-new-password")
    assert not verify_password(u["dr.house"].password_hash, "vicodin-and-lupus")

    assert run(cfg, "users", "disable", "dr.house") == 0
    assert users(cfg)["dr.house"].state is UserState.DISABLED

    # Each act is in the audit log, and the chain verifies.
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory() as session:
        actions = [e.action for e in session.execute(
            select(AuditEvent).order_by(AuditEvent.id)).scalars()]
    assert actions == ["user_add", "user_add", "user_set_password", "user_disable"]
    assert run(cfg, "audit", "verify") == 0


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["users", "add", "x", "--role", "doctor", "--password-stdin"], "long-enough-pass\n",
     "invalid user name"),
    (["users", "add", "shorty", "--role", "doctor", "--password-stdin"], "short\n", "too short"),
    (["users", "add", "nopass", "--role", "doctor", "--password-stdin"], "\n", "no password"),
    (["users", "disable", "ghost"], None, "no user 'ghost'"),
    (["users", "set-password", "ghost", "--password-stdin"], "long-enough-pass\n",
     "no user 'ghost'"),
])
def test_user_command_errors(cfg, capsys, monkeypatch, args, stdin, message) -> None:
    open_node(load_settings(cfg)).engine.dispose()  # the node has started once
    assert run(cfg, *args, stdin=stdin, monkeypatch=monkeypatch) == 1
    assert message in capsys.readouterr().err


def test_duplicate_user_and_last_admin(cfg, capsys, monkeypatch) -> None:
    assert run(cfg, "users", "add", "boss", "--role", "admin", "--password-stdin",
               stdin="a-strong-password\n", monkeypatch=monkeypatch) == 0
    assert run(cfg, "users", "add", "boss", "--role", "doctor", "--full-name", "B. Oss",
               "--password-stdin", stdin="a-strong-password\n", monkeypatch=monkeypatch) == 1
    assert "already exists" in capsys.readouterr().err
    assert run(cfg, "users", "disable", "boss") == 1
    assert "last active admin" in capsys.readouterr().err


def test_password_from_non_tty_without_flag_is_refused(cfg, capsys, monkeypatch) -> None:
    assert run(cfg, "users", "add", "dr.a", "--role", "doctor", stdin="x\n",
               monkeypatch=monkeypatch) == 1
    assert "--password-stdin" in capsys.readouterr().err


def test_first_admin_random_password_printed_once(cfg) -> None:
    ctx = open_node(load_settings(cfg))
    out = io.StringIO()
    bootstrap_admin(ctx, out)
    text = out.getvalue()
    password = text.split("one-time password:")[1].split()[0]
    assert len(password) >= 16
    with ctx.session_factory() as session:
        admin = session.execute(select(User).where(User.username == "admin")).scalar_one()
        assert verify_password(admin.password_hash, password)
        assert admin.role.value == "admin"
    again = io.StringIO()
    bootstrap_admin(ctx, again)
    assert again.getvalue() == ""


def test_first_admin_password_from_environment(cfg, monkeypatch) -> None:
    monkeypatch.setenv("BCD_ADMIN_PASSWORD", "from-the-environment")
    ctx = open_node(load_settings(cfg))
    out = io.StringIO()
    bootstrap_admin(ctx, out)
    assert "from-the-environment" not in out.getvalue()
    with ctx.session_factory() as session:
        admin = session.execute(select(User)).scalar_one()
        assert verify_password(admin.password_hash, "from-the-environment")


def test_two_nodes_never_share_a_secret(tmp_path: Path) -> None:
    a = ensure_secrets(tmp_path / "a")
    b = ensure_secrets(tmp_path / "b")
    assert a.session_key != b.session_key and a.api_token_salt != b.api_token_salt
    assert ensure_secrets(tmp_path / "a") == a  # stable once generated
    for name in ("session_key", "api_token_salt"):
        mode = stat.S_IMODE((tmp_path / "a" / "secrets" / name).stat().st_mode)
        assert mode == 0o600
    assert stat.S_IMODE((tmp_path / "a" / "secrets").stat().st_mode) == 0o700


def test_loose_secret_permissions_are_tightened(tmp_path: Path) -> None:
    ensure_secrets(tmp_path)
    key = tmp_path / "secrets" / "session_key"
    key.chmod(0o644)
    ensure_secrets(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize("tamper", ["edit", "delete"])
def test_tampered_audit_row_fails_verify(cfg, capsys, monkeypatch, tamper) -> None:
    for name in ("dr.a", "dr.b", "dr.c"):
        assert run(cfg, "users", "add", name, "--role", "doctor", "--full-name",
                   f"Dr {name}", "--password-stdin", stdin="long-enough-password\n",
                   monkeypatch=monkeypatch) == 0
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory.begin() as session:
        assert verify_chain(session).ok
        second = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()[1]
        if tamper == "edit":
            session.execute(update(AuditEvent).where(AuditEvent.id == second.id)
                            .values(actor="someone-else"))
        else:
            session.delete(second)
    capsys.readouterr()
    assert run(cfg, "audit", "verify") == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out


def test_approve_role_and_tokens_from_the_command_line(cfg, capsys, monkeypatch) -> None:
    from bcd_node.db.models import ApiToken
    from bcd_node.records.users import find_token, register_doctor

    assert run(cfg, "users", "add", "boss", "--role", "admin", "--password-stdin",
               stdin="a-strong-password\n", monkeypatch=monkeypatch) == 0
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory.begin() as s:
        register_doctor(s, "dr.new", "another-long-password", full_name="Dr New")
    assert users(cfg)["dr.new"].state is UserState.PENDING
    assert run(cfg, "users", "approve", "dr.new") == 0
    assert users(cfg)["dr.new"].state is UserState.ACTIVE
    assert run(cfg, "users", "role", "dr.new", "--role", "admin") == 0
    assert users(cfg)["dr.new"].role.value == "admin"
    capsys.readouterr()
    assert run(cfg, "users", "tokens", "issue", "dr.new", "--name", "ris") == 0
    text = capsys.readouterr().out.strip().splitlines()[-1]
    with ctx.session_factory() as s:
        assert find_token(s, ctx.secrets.api_token_salt, text) is not None
        token_id = s.execute(select(ApiToken.id)).scalar_one()
    assert run(cfg, "users", "tokens", "list") == 0
    listing = capsys.readouterr().out
    assert "ris" in listing and text not in listing
    assert run(cfg, "users", "tokens", "revoke", str(token_id)) == 0
    with ctx.session_factory() as s:
        assert find_token(s, ctx.secrets.api_token_salt, text) is None


def test_a_doctor_has_a_full_name_to_sign_with(cfg, capsys, monkeypatch) -> None:
    """The reports a doctor signs name them: a doctor without a full name is refused at
    `users add` and as a new role, and one made before this rule cannot sign until an admin
    names them (`users set-name`, audited). A walk found "Signed by drgrey" on a report, and
    drgrey^drgrey in the HL7 message."""
    from bcd_node.db.models import AuditEvent, Role, Study, User
    from bcd_node.records.verification import NotADoctorError, sign_case
    from tests.support.seed import add_case

    assert run(cfg, "users", "add", "drgrey", "--role", "doctor", "--password-stdin",
               stdin="a-strong-password\n", monkeypatch=monkeypatch) == 1
    assert "a doctor needs a full name" in capsys.readouterr().err
    assert run(cfg, "users", "add", "boss", "--role", "admin", "--password-stdin",
               stdin="a-strong-password\n", monkeypatch=monkeypatch) == 0
    assert run(cfg, "users", "role", "boss", "--role", "doctor") == 1
    assert "has no full name" in capsys.readouterr().err
    ctx = open_node(load_settings(cfg), migrate=False)
    with ctx.session_factory.begin() as s:  # a doctor from before the rule
        s.add(User(username="drold", password_hash="x", role=Role.DOCTOR, full_name=""))
        study, _summary = add_case(s, ctx.settings.storage.data_dir, fields=1)
        study_id = study.id
    with ctx.session_factory.begin() as s:
        doctor = s.query(User).filter_by(username="drold").one()
        with pytest.raises(NotADoctorError, match="no full name"):
            sign_case(s, s.get(Study, study_id), "accept", stage=None, comment=None,
                      user_id=doctor.id, actor="drold", actor_kind="user")
    assert run(cfg, "users", "set-name", "drold", "--full-name", "  Meredith   Grey ") == 0
    assert users(cfg)["drold"].full_name == "Meredith Grey"
    assert run(cfg, "users", "set-name", "drold", "--full-name", " ") == 1
    assert "a doctor needs a full name" in capsys.readouterr().err
    with ctx.session_factory.begin() as s:
        doctor = s.query(User).filter_by(username="drold").one()
        sign_case(s, s.get(Study, study_id), "accept", stage=None, comment=None,
                  user_id=doctor.id, actor="drold", actor_kind="user")
        event = s.query(AuditEvent).filter_by(action="user_full_name").one()
        assert event.details == {"from": "", "to": "Meredith Grey"}
    ctx.engine.dispose()


def test_roles_started_together_agree_on_the_secrets(tmp_path: Path, monkeypatch) -> None:
    """Two processes creating the secrets at once never read a half-written file: the one
    that is slower to generate its secret takes the one already in place."""
    import secrets as std_secrets
    import threading

    from bcd_node.store import secrets as node_secrets

    first_generated = threading.Event()
    other_done = threading.Event()
    real = std_secrets.token_urlsafe

    def slow_first(n: int) -> str:
        if threading.current_thread().name == "slow" and not first_generated.is_set():
            first_generated.set()
            assert other_done.wait(10)
        return real(n)

    monkeypatch.setattr(node_secrets.secrets, "token_urlsafe", slow_first)
    results: dict[str, object] = {}

    def start(name: str) -> None:
        try:
            results[name] = ensure_secrets(tmp_path)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc
        finally:
            if name == "fast":
                other_done.set()

    slow = threading.Thread(target=start, args=("slow",), name="slow")
    slow.start()
    assert first_generated.wait(10)
    fast = threading.Thread(target=start, args=("fast",), name="fast")
    fast.start()
    fast.join(10)
    slow.join(10)
    assert not isinstance(results["fast"], Exception), results["fast"]
    assert results["slow"] == results["fast"]
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == sorted(
        node_secrets.SECRET_NAMES)  # no temporary file left


def test_first_admin_made_by_another_web_process_meanwhile(cfg, monkeypatch) -> None:
    """Two `web` roles starting together on a new database: the one that loses the race to
    create `admin` starts normally and prints no password (the other one printed its own)."""
    from bcd_node.records import users
    from bcd_node.records.users import Role, add_user

    ctx = open_node(load_settings(cfg))
    real = users.generate_password

    def other_process_first() -> str:
        with ctx.session_factory.begin() as other:
            add_user(other, "admin", "the-other-process-password", Role.ADMIN,
                     actor="system", actor_kind="system")
        return real()

    monkeypatch.setattr(users, "generate_password", other_process_first)
    out = io.StringIO()
    bootstrap_admin(ctx, out)
    assert out.getvalue() == ""
    with ctx.session_factory() as session:
        admin = session.execute(select(User)).scalar_one()
        assert verify_password(admin.password_hash, "the-other-process-password")


def test_too_weak_admin_password_from_environment_is_refused(cfg, monkeypatch) -> None:
    from bcd_node.records.users import UserError

    monkeypatch.setenv("BCD_ADMIN_PASSWORD", "short")
    ctx = open_node(load_settings(cfg))
    with pytest.raises(UserError, match="too short"):
        bootstrap_admin(ctx, io.StringIO())
    with ctx.session_factory() as session:
        assert session.execute(select(User)).first() is None


@pytest.mark.parametrize("args", [["status"], ["users", "list"], ["users", "disable", "x"],
                                  ["jobs", "retry"], ["deliveries", "retry"], ["audit", "verify"]])
def test_a_command_pointed_where_no_node_is_makes_none(cfg, capsys, args) -> None:
    """A typo in storage.data_dir, or a forgotten --config: status made a new empty node (a
    database, secrets) and reported it fine. Now the commands that read a node's records say
    there is none, and make nothing; `users add` may come before the first start."""
    data = load_settings(cfg).storage.data_dir
    assert run(cfg, *args) == 1
    assert "no node's database in" in capsys.readouterr().err
    assert not data.exists()


def test_an_unusable_data_folder_is_named(write_config, tmp_path, capsys, monkeypatch) -> None:
    """A data folder below a file (or on a read-only file system): a message naming
    storage.data_dir and exit 2, not a traceback."""
    (tmp_path / "file").write_text("")
    cfg = write_config(data_dir=tmp_path / "file" / "data")
    assert run(cfg, "users", "add", "dr.x", "--role", "doctor", "--password-stdin",
               stdin="long-enough-pass\n", monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "configuration error: invalid setting storage.data_dir" in err and "Traceback" not in err


def test_the_data_folder_is_closed_to_others_and_a_stricter_one_stays_so(cfg) -> None:
    data = load_settings(cfg).storage.data_dir
    data.mkdir(parents=True)
    data.chmod(0o777)
    open_node(load_settings(cfg)).engine.dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    data.chmod(0o700)
    open_node(load_settings(cfg)).engine.dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700  # was opened up to 0750

