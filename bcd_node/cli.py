"""The ``bcd-node`` command line.

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
import sys
from typing import Any, Callable, Sequence

from bcd_node import __version__
from bcd_node.errors import BcdError
from bcd_node.logs import configure_logging
from bcd_node.settings import Settings, SettingsError, load_settings, to_display_dict

LOGGER = logging.getLogger(__name__)

#: Modules that add their own sub-commands with ``register(subparsers)``.
COMMAND_MODULES = ("bcd_node.inference.commands", "bcd_node.dicom_commands")


def settings_for(args: argparse.Namespace) -> Settings:
    """Load the settings named by ``--config`` (cached on ``args``)."""
    if getattr(args, "_settings", None) is None:
        args._settings = load_settings(args.config)
    return args._settings


def _context(args: argparse.Namespace) -> Any:
    from bcd_node.runtime import open_node
    return open_node(settings_for(args), migrate=False)


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node."""
    from bcd_node.serve import serve
    return serve(settings_for(args))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply migrations."""
    from bcd_node.db.engine import make_engine
    from bcd_node.db.migrate import upgrade
    from bcd_node.settings import mask_url

    settings = settings_for(args)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        revision = upgrade(engine, args.revision)
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
    from bcd_node.users import add_user

    password = _read_password(args)
    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        add_user(session, args.username, password, args.role, full_name=args.full_name,
                 email=args.email, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} added ({args.role})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    """List users."""
    from bcd_node.users import list_users

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
    from bcd_node.users import disable_user

    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        disable_user(session, args.username, actor=_cli_actor(), actor_kind="cli")
    print(f"user {args.username} disabled")
    return 0


def cmd_users_set_password(args: argparse.Namespace) -> int:
    """Set a user's password."""
    from bcd_node.users import set_password

    password = _read_password(args)
    ctx = _context(args)
    with ctx.session_factory.begin() as session:
        set_password(session, args.username, password, actor=_cli_actor(), actor_kind="cli")
    print(f"password of {args.username} set")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the audit hash chain."""
    from bcd_node.audit import verify_chain

    ctx = _context(args)
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


def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str,
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
    add.add_argument("--full-name", default="")
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

    aud = sub.add_parser("audit", help="audit log", description="audit log")
    aud_sub = aud.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    _add(aud_sub, "verify", cmd_audit_verify,
         "check the audit log's hash chain; exit 1 when a row was changed or removed")

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
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"bcd-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BcdError, ValueError) as exc:
        print(f"bcd-node: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
