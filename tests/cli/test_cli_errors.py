"""``bcd-node`` tells a user's mistake (exit 1, one line) from a bug (a traceback)."""

from __future__ import annotations

import argparse
from typing import Callable

import pytest

from bcd_node.cli import commands
from bcd_node.records.users import UserError
from dicom.errors import DicomValidationError
from dicom.scu import Peer


def _status_raising(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def cmd_status(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(commands, "cmd_status", cmd_status)


@pytest.mark.parametrize("error", [UserError("no user 'nobody'"),
                                   DicomValidationError("port must be 1-65535, got 70000")])
def test_a_users_mistake_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                write_config: Callable[..., object],
                                                capsys: pytest.CaptureFixture[str],
                                                error: Exception) -> None:
    _status_raising(monkeypatch, error)
    assert commands.main(["--config", str(write_config()), "status"]) == 1
    assert capsys.readouterr().err == f"bcd-node: error: {error}\n"


def test_a_bugs_value_error_is_not_taken_for_a_users_mistake(
        monkeypatch: pytest.MonkeyPatch, write_config: Callable[..., object]) -> None:
    _status_raising(monkeypatch, ValueError("too many values to unpack (expected 2)"))
    with pytest.raises(ValueError, match="too many values"):
        commands.main(["--config", str(write_config()), "status"])


def test_send_to_a_bad_port_is_a_users_mistake(write_config: Callable[..., object],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # The SCU's parameters are checked by the builder (its validation error), before any
    # network traffic.
    with pytest.raises(DicomValidationError):
        Peer(ae_title="PACS", host="127.0.0.1", port=70000)
    with pytest.raises(SystemExit) as exc:  # invalid usage
        commands.main(["--config", str(write_config()), "send", "x.dcm",
                       "--to", "PACS@127.0.0.1:70000"])
    assert exc.value.code == 2
    assert "port must be 1-65535" in capsys.readouterr().err


def test_db_upgrade_to_an_unknown_revision_is_a_users_mistake(
        write_config: Callable[..., object], capsys: pytest.CaptureFixture[str]) -> None:
    # A typo in the target revision gave alembic's traceback (found by a walk).
    assert commands.main(["--config", str(write_config()), "db", "upgrade", "9999"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bcd-node: error: cannot upgrade to revision '9999': ")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("limit", ["-3", "abc"])
def test_status_with_a_limit_that_is_no_count_is_invalid_usage(
        write_config: Callable[..., object], capsys: pytest.CaptureFixture[str],
        limit: str) -> None:
    # A negative --limit reached the database: on PostgreSQL "the database cannot be used:
    # LIMIT must not be negative" (exit 1), on SQLite no limit at all (found by a walk).
    with pytest.raises(SystemExit) as exc:
        commands.main(["--config", str(write_config()), "status", "--limit", limit])
    assert exc.value.code == 2
    assert "argument --limit" in capsys.readouterr().err


@pytest.mark.parametrize("to", ["PACS@127.0.0.1", "PACS127.0.0.1:104", "PACS@host:0",
                                "PACS@host:99999"])
def test_send_to_an_address_that_is_not_one_is_invalid_usage(
        write_config: Callable[..., object], capsys: pytest.CaptureFixture[str],
        to: str) -> None:
    # It was exit 1, as if sending had failed; the README says invalid usage exits 2.
    with pytest.raises(SystemExit) as exc:
        commands.main(["--config", str(write_config()), "send", "--to", to, "x.dcm"])
    assert exc.value.code == 2
    assert "argument --to" in capsys.readouterr().err
