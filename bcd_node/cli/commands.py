"""The ``bcd-node`` command line: the parser, the node's own commands (the roles, status,
deliveries, send, db, config, users, audit) and :func:`main`; the modules in
:data:`COMMAND_MODULES` add theirs (the model's, ``import``).

Exit codes: 0 success, 1 the command failed, 2 bad usage or invalid configuration (the message
names the setting).
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sqlalchemy.exc import DBAPIError

from bcd_node import __version__
from bcd_node.errors import BcdError
from bcd_node.node.logs import configure_logging
from bcd_node.settings import Settings, SettingsError, load_settings, to_display_dict
from dicom.errors import DicomError

if TYPE_CHECKING:
    from bcd_node.runtime import NodeContext

LOGGER = logging.getLogger(__name__)

#: Modules that add their own sub-commands with ``register(subparsers)``.
COMMAND_MODULES = ("bcd_node.cli.model_commands", "bcd_node.cli.dicom_commands")


def settings_for(args: argparse.Namespace) -> Settings:
    """Load the settings named by ``--config`` (cached on ``args``)."""
    settings: Settings | None = getattr(args, "_settings", None)
    if settings is None:
        settings = args._settings = load_settings(args.config)
    return settings


def _context(args: argparse.Namespace, *, create: bool = False) -> NodeContext:
    """The node the command works on; only ``create`` (``users add``, before the first start)
    makes one where there is none (:func:`~bcd_node.runtime.open_node`)."""
    from bcd_node.runtime import open_node
    return open_node(settings_for(args), migrate=False, create=create)


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node."""
    from bcd_node.node.serve import serve
    return serve(settings_for(args))


def cmd_role(args: argparse.Namespace) -> int:
    """Run one role (the worker at a lower CPU priority than the listener)."""
    from bcd_node.node.serve import run
    settings = settings_for(args)
    if args.command == "worker":
        from bcd_node.node.priority import lower_priority

        lower_priority(settings.workers.niceness)
    return run(settings, (args.command,))


def cmd_status(args: argparse.Namespace) -> int:
    """Print queue and delivery state (the console's System page shows the same)."""
    from bcd_node.db.models import DeliveryState, utcnow
    from bcd_node.delivery.status import node_status

    ctx = _context(args)
    with ctx.session_factory() as session:
        status = node_status(session, settings_for(args), waiting=args.limit)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    overview = status.deliveries
    print("jobs:        " + ", ".join(f"{state.value} {n}"
                                      for state, n in status.jobs.by_state.items()))
    lis = {system.name for system in settings_for(args).lis}
    for dest in overview.destinations or []:
        # An LIS (HL7 over MLLP) gets no C-ECHO: its health is its deliveries' alone.
        echo = ("no C-ECHO (HL7 over MLLP)" if dest.name in lis and dest.echo_ok is None else
                "C-ECHO never checked" if dest.echo_ok is None else
                "C-ECHO ok" if dest.echo_ok else f"C-ECHO failing: {dest.echo_error}")
        verdict = "OK" if dest.ok else (f"{dest.waiting} waiting" if dest.waiting
                                        else "not answering")
        print(f"{dest.name:<12} {verdict}; " + ", ".join(
            f"{s.value} {dest.counts.get(s.value, 0)}" for s in DeliveryState) + f"; {echo}")
    if not overview.destinations:
        print("deliveries:  no destinations configured")
    if overview.waiting:
        more = overview.waiting_total - len(overview.waiting)
        print(f"deliveries waiting ({overview.waiting_total}"
              f"{f', first {len(overview.waiting)} shown' if more else ''}):")
        for w in overview.waiting:
            print(f"  {w.describe()}")
    else:
        print("deliveries waiting: none")
    for f in status.recent_failures:
        print(f"failed job {f.id} ({f.kind.value}): {f.error}")
    print(f"disk:        {status.disk.describe()}")
    now = utcnow()
    for process in status.processes:
        print(f"process:     {process.describe(now)}")
    if not status.processes:
        print("process:     none has run on this database")
    return 0


def cmd_deliveries_retry(args: argparse.Namespace) -> int:
    """Retry dead-lettered deliveries."""
    from bcd_node.delivery.outbox import DeliveryRetryError, retry_deliveries

    ctx = _context(args)
    try:
        with ctx.session_factory.begin() as session:
            done = retry_deliveries(session, args.ids or None, actor=_cli_actor(),
                                    actor_kind="cli")
    except DeliveryRetryError as exc:
        raise CommandError(str(exc)) from None
    n = len(done)
    print(f"{n} deliver{'y' if n == 1 else 'ies'} queued again"
          + (": " + ", ".join(map(str, done)) if args.ids else ""))
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    """Queue jobs that failed for good again."""
    from bcd_node.jobs.retry import JobRetryError, retry_failed_jobs

    ctx = _context(args)
    try:
        with ctx.session_factory.begin() as session:
            done = retry_failed_jobs(session, args.ids or None, actor=_cli_actor(),
                                     actor_kind="cli")
    except JobRetryError as exc:
        raise CommandError(str(exc)) from None
    n = len(done)
    print(f"{n} job{'' if n == 1 else 's'} queued again"
          + (": " + ", ".join(map(str, done)) if done else ""))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Send files to a peer by C-STORE."""
    from dicom.scu import Peer, PeerUnavailableError, send_files

    ae_title, host, port = args.to
    d = settings_for(args).delivery
    peer = Peer(ae_title=ae_title, host=host, port=port,
                calling_ae=settings_for(args).dicom.ae_title, connect_timeout=d.connect_timeout,
                acse_timeout=d.acse_timeout, dimse_timeout=d.dimse_timeout,
                network_timeout=d.network_timeout)
    try:
        outcomes = send_files(peer, args.files)
    except PeerUnavailableError as exc:
        raise CommandError(str(exc)) from None
    failed = 0
    for o in outcomes:
        print(f"{o.path}: {'ok' if o.ok else 'FAILED ' + o.error}")
        failed += not o.ok
    return 1 if failed else 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply migrations."""
    from alembic.util import CommandError as AlembicCommandError

    from bcd_node.db.engine import make_engine
    from bcd_node.db.migrate import head_revision, upgrade
    from bcd_node.settings import mask_url

    settings = settings_for(args)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        revision = upgrade(engine, args.revision)
    except AlembicCommandError as exc:
        # An unknown or impossible target revision (a typo): the user's mistake, one line.
        raise CommandError(f"cannot upgrade to revision {args.revision!r}: {exc} (this "
                           f"version's newest is {head_revision()})") from None
    finally:
        engine.dispose()
    print(f"database {mask_url(settings.database_url)} at revision {revision}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective settings."""
    settings = settings_for(args)
    data = to_display_dict(settings)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    import tomli_w
    print(f"# effective settings (file: {settings.source}; environment overrides applied)")
    print(tomli_w.dumps(data), end="")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CommandError("standard input is not a terminal: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise CommandError("the passwords differ")
    return first


def cmd_users_add(args: argparse.Namespace) -> int:
    """Add a user."""
    from bcd_node.records.users import add_user

    password = _read_password(args)
    ctx = _context(args, create=True)  # an administrator may come before the first start
    with ctx.session_factory.begin() as session:
        add_user(session, args.username, password, args.role, full_name=args.full_name,
                 email=args.email, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} added ({args.role})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    """List users."""
    from bcd_node.records.users import list_users

    ctx = _context(args)
    with ctx.session_factory() as session:
        users = list_users(session)
        rows = [{"username": u.username, "role": u.role.value, "state": u.state.value,
                 "full_name": u.full_name,
                 "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None}
                for u in users]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'USERNAME':<24} {'ROLE':<8} {'STATE':<9} LAST LOGIN")
    for r in rows:
        print(f"{r['username']:<24} {r['role']:<8} {r['state']:<9} {r['last_login_at'] or '-'}")
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    """Disable a user."""
    from bcd_node.records.users import disable_user

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        disable_user(session, args.username, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} disabled")
    return 0


def cmd_users_set_password(args: argparse.Namespace) -> int:
    """Set a user's password."""
    from bcd_node.records.users import set_password

    password = _read_password(args)
    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        set_password(session, args.username, password, actor=_cli_actor(), actor_kind="cli")
    print(f"password of {args.username} set")
    return 0


def cmd_users_unlock(args: argparse.Namespace) -> int:
    """Lift a user's sign-in lock."""
    from bcd_node.records.users import unlock_user

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        was_locked = unlock_user(session, args.username, actor=_cli_actor(), actor_kind="cli")
    print(f"sign-in of {args.username} unlocked" if was_locked
          else f"{args.username} was not locked; failed attempts forgotten")
    return 0


def cmd_users_approve(args: argparse.Namespace) -> int:
    """Activate a pending or disabled user."""
    from bcd_node.records.users import approve_user

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        approve_user(session, args.username, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} is active")
    return 0


def cmd_users_role(args: argparse.Namespace) -> int:
    """Change a user's role."""
    from bcd_node.records.users import set_role

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        set_role(session, args.username, args.role, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} is now {args.role}")
    return 0


def cmd_users_set_name(args: argparse.Namespace) -> int:
    """Change a user's full name (the name the reports they sign give)."""
    from bcd_node.records.users import set_full_name

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        set_full_name(session, args.username, args.full_name, actor=_cli_actor(),
                      actor_kind="cli")
    print(f"user {args.username} is now named {' '.join(args.full_name.split())!r}")
    return 0


def cmd_tokens_issue(args: argparse.Namespace) -> int:
    """Issue an API token."""
    from bcd_node.records.users import issue_token

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        token, text = issue_token(session, args.username, args.name, ctx.secrets.api_token_salt,
                                  actor=_cli_actor(), actor_kind="cli")
        token_id = token.id
    print(f"token {token_id} for {args.username}; shown only now:\n{text}")
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    """List API tokens."""
    from sqlalchemy import select

    from bcd_node.db.models import ApiToken, User

    ctx = _context(args)
    with ctx.session_factory() as session:
        rows = session.execute(select(ApiToken, User.username).join(
            User, ApiToken.user_fk == User.id).order_by(ApiToken.id)).all()
        print(f"{'ID':>4} {'USER':<20} {'NAME':<20} {'PREFIX':<10} STATE")
        for token, username in rows:
            state = "revoked" if token.revoked_at else "active"
            print(f"{token.id:>4} {username:<20} {token.name:<20} {token.prefix:<10} {state}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    """Revoke an API token."""
    from bcd_node.records.users import revoke_token

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        revoke_token(session, args.id, actor=_cli_actor(), actor_kind="cli")
    print(f"token {args.id} revoked")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the database's integrity and the audit hash chain."""
    from bcd_node.db.integrity import quick_check
    from bcd_node.records.audit import verify_chain

    ctx = _context(args)
    problems = quick_check(ctx.engine)
    if problems:
        print("database DAMAGED (PRAGMA quick_check): " + "; ".join(problems)[:1000]
              + "\nRestore it from a backup (docs/operations.md); the audit chain cannot be "
              "trusted until then.")
        return 1
    with ctx.session_factory() as session:
        report = verify_chain(session)
    if report.ok:
        print(f"audit chain intact: {report.checked} events")
        return 0
    print(f"audit chain BROKEN at event {report.first_bad_id}: {report.reason} "
          f"({report.checked} events before it are intact)")
    return 1


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


class CommandError(BcdError):
    """A command-line problem reported as a one-line message with exit code 1."""


# --------------------------------------------------------------------------- parser


def _peer_address(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` (argparse's type: anything else is invalid usage, exit 2)."""
    match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected AE@HOST:PORT")
    if not 0 < int(match[3]) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1-65535")
    return match[1], match[2], int(match[3])


def _count(text: str) -> int:
    """An argument that counts something: a whole number, 0 or more (argparse's type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
         func: Callable[[argparse.Namespace], int], help_: str,
         **kwargs: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_, **kwargs)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="bcd-node",
        description="DICOM node that screens blood-smear images for acute lymphoblastic "
                    "leukaemia (demonstration model: not for clinical use).")
    parser.add_argument("--version", action="version", version=f"bcd-node {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $BCD_CONFIG or config/bcd-node.toml)")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="log format (default: logging.format)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level (default: logging.level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add(sub, "serve", cmd_serve, "run the DICOM listener, workers, scheduler and web console")
    _add(sub, "scp", cmd_role, "run only the DICOM listener and intake (multi-process mode)")
    _add(sub, "worker", cmd_role,
         "run only the analysis workers and the delivery scheduler (multi-process mode)")
    _add(sub, "web", cmd_role, "run only the web console and API (multi-process mode)")
    st = _add(sub, "status", cmd_status, "print queue and delivery state, and the deliveries "
              "waiting (attempts, next attempt, last error)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--limit", type=_count, default=50, metavar="N",
                    help="list at most N waiting deliveries (default 50)")
    snd = _add(sub, "send", cmd_send, "send DICOM files to a peer by C-STORE")
    snd.add_argument("files", nargs="+", metavar="FILE")
    snd.add_argument("--to", required=True, metavar="AE@HOST:PORT", type=_peer_address)
    dl = sub.add_parser("deliveries", help="deliveries to PACS", description="deliveries to PACS")
    dl_sub = dl.add_subparsers(dest="deliveries_command", metavar="COMMAND", required=True)
    rt = _add(dl_sub, "retry", cmd_deliveries_retry,
              "queue deliveries that need attention (dead letter) again")
    rt.add_argument("ids", nargs="*", type=int,
                    help="delivery ids (default: all that need attention); an id that is "
                         "unknown or does not need attention is an error (exit 1)")

    jobs = sub.add_parser("jobs", help="analysis jobs", description="analysis jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    jr = _add(jobs_sub, "retry", cmd_jobs_retry,
              "queue jobs that failed for good again (attempts reset); an image analysed then "
              "gets an SR that supersedes its 'could not be analysed' SR")
    jr.add_argument("ids", nargs="*", type=int,
                    help="job ids (default: every failed job); an id that is unknown or has "
                         "not failed is an error (exit 1)")

    db = sub.add_parser("db", help="database maintenance", description="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = _add(db_sub, "upgrade", cmd_db_upgrade, "apply database migrations")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")

    config = sub.add_parser("config", help="configuration", description="configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = _add(config_sub, "show", cmd_config_show,
                "print the effective settings (file + environment), secrets masked")
    show.add_argument("--format", choices=("toml", "json"), default="toml")

    users = sub.add_parser("users", help="console users", description="console users")
    users_sub = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    add = _add(users_sub, "add", cmd_users_add, "add a user")
    add.add_argument("username")
    add.add_argument("--role", choices=("admin", "doctor"), required=True)
    add.add_argument("--full-name", default="",
                     help="the name printed on the reports a doctor signs (needed for a doctor)")
    add.add_argument("--email", default="")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    lst = _add(users_sub, "list", cmd_users_list, "list users")
    lst.add_argument("--json", action="store_true", help="print JSON")
    dis = _add(users_sub, "disable", cmd_users_disable, "disable a user and revoke their tokens")
    dis.add_argument("username")
    pw = _add(users_sub, "set-password", cmd_users_set_password,
              "set a user's password and clear a lockout")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")

    ul = _add(users_sub, "unlock", cmd_users_unlock,
              "lift a sign-in lock after failed attempts (the password stays)")
    ul.add_argument("username")
    ap = _add(users_sub, "approve", cmd_users_approve,
              "activate a self-registered (pending) or disabled user")
    ap.add_argument("username")
    sn = _add(users_sub, "set-name", cmd_users_set_name,
              "change a user's full name (the name on the reports a doctor signs)")
    sn.add_argument("username")
    sn.add_argument("--full-name", required=True)
    rl = _add(users_sub, "role", cmd_users_role, "change a user's role (never the last admin's)")
    rl.add_argument("username")
    rl.add_argument("--role", choices=("admin", "doctor"), required=True)
    tok = users_sub.add_parser("tokens", help="API tokens", description="API tokens")
    tok_sub = tok.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    ti = _add(tok_sub, "issue", cmd_tokens_issue, "issue a bearer token (printed once)")
    ti.add_argument("username")
    ti.add_argument("--name", required=True, help="what the token is for")
    _add(tok_sub, "list", cmd_tokens_list, "list tokens (never their secret)")
    tr = _add(tok_sub, "revoke", cmd_tokens_revoke, "revoke a token")
    tr.add_argument("id", type=int)

    aud = sub.add_parser("audit", help="audit log", description="audit log")
    aud_sub = aud.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    _add(aud_sub, "verify", cmd_audit_verify,
         "check the database's integrity and the audit log's hash chain; exit 1 when the "
         "database is damaged or a row was changed or removed")

    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bcd-node``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_for(args)
    except SettingsError as exc:
        print(f"bcd-node: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level or settings.logging.level,
                      args.log_format or settings.logging.format)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader gone away is the next except's
        return code
    except BrokenPipeError:
        # What reads the output went away (``bcd-node status | head -1``): not an error of the
        # command, and no traceback. Python would fail flushing stdout again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except SettingsError as exc:
        print(f"bcd-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BcdError, DicomError) as exc:  # a bug's ValueError is shown as the crash it is
        print(f"bcd-node: error: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        from bcd_node.db.integrity import is_damage

        what = "is damaged" if is_damage(exc) else "cannot be used"
        print(f"bcd-node: error: the database {what}: {exc.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

