"""The command line: every command has --help; logging formats; layout rules."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bcd_node.cli.commands import build_parser, main
from bcd_node.node.logs import configure_logging

ROOT = Path(__file__).resolve().parents[2]


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths.extend(_command_paths(sub, prefix + (name,)))
    return paths


COMMANDS = _command_paths(build_parser())


def test_required_commands_exist() -> None:
    for path in [("serve",), ("db", "upgrade"), ("config", "show"), ("users", "add"),
                 ("users", "list"), ("users", "disable"), ("users", "set-password"),
                 ("audit", "verify")]:
        assert path in COMMANDS


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "bcd-node")
def test_every_command_has_help(path: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: bcd-node" in capsys.readouterr().out


def test_json_log_format(capsys) -> None:
    configure_logging("INFO", "json")
    try:
        logging.getLogger("bcd_node.test").info("job %d claimed", 7, extra={"job_id": 7})
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["message"] == "job 7 claimed"
        assert record["logger"] == "bcd_node.test" and record["level"] == "INFO"
        assert record["job_id"] == 7
    finally:
        configure_logging("WARNING", "text")


_READ_BAD_VALUES = """
import io, pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from bcd_node.node.logs import configure_logging

configure_logging("INFO", {fmt!r})
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.3"
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
ds.PatientBirthDate = "1961x0707"
ds.PatientSex = "o'neil-x"
buffer = io.BytesIO()
ds.save_as(buffer, enforce_file_format=True)
pydicom.config.settings.writing_validation_mode = pydicom.config.WARN  # the library default
read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
print(read.PatientBirthDate, read.PatientSex)  # converted: pydicom checks and reports them
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_invalid_values_pydicom_reports_stay_out_of_the_log(fmt) -> None:
    done = subprocess.run([sys.executable, "-c", _READ_BAD_VALUES.format(fmt=fmt)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1961x0707", "o'neil-x"]  # the data itself is unchanged
    log = done.stderr
    assert "1961x0707" not in log and "neil" not in log
    lines = log.strip().splitlines()
    # Each report once (pydicom also repeats it as a Python warning), value withheld.
    assert len(lines) == 2, log
    assert "Invalid value for VR DA: '…'" in lines[0] and "Invalid value for VR CS" in lines[1]
    if fmt == "json":
        assert [json.loads(line)["logger"] for line in lines] == ["pydicom", "pydicom"]


def _imports(package: str, allow: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if path.relative_to(ROOT).as_posix() in allow:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_dependency_direction() -> None:
    """webadmin → bcd_node → dicom, never back."""
    assert not {"bcd_node", "webadmin", "flask"} & _imports("dicom")
    # bcd_node/node/serve.py is the composition root of `bcd-node serve`: it alone starts the
    # console.
    assert not {"webadmin", "flask", "flask_login", "flask_wtf"} & _imports(
        "bcd_node", allow=("bcd_node/node/serve.py",))
    assert "dicom" not in _imports("webadmin")


def test_output_read_only_in_part_ends_quietly(write_config) -> None:
    """``bcd-node config show | head -1``: the reader goes away; the command printed a
    BrokenPipeError traceback."""
    config = write_config()
    proc = subprocess.Popen([sys.executable, "-m", "bcd_node.cli", "--config", str(config),
                             "config", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # gone before the command writes
    _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 141, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
