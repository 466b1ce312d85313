"""The sub-commands, called through an argparse parser as the CLI does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from bcd_node.cli import model_commands as commands
from bcd_node.errors import ValidationError
from tests.support.images import write_smears


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcd-node")
    parser.add_argument("--config", default=None)
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_register_adds_commands() -> None:
    parser = _parser()
    for argv in (["synth", "--out", "x", "--count", "2", "--seed", "1"],
                 ["train", "data", "--out", "w"], ["evaluate", "data"],
                 ["analyze", "a.png", "--json"]):
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_synth_command(tmp_path: Path, capsys) -> None:
    assert _run(["synth", "--out", str(tmp_path), "--count", "4", "--seed", "9"]) == 0
    assert (tmp_path / "labels.csv").is_file()
    assert len(list((tmp_path / "images").iterdir())) == 4


@pytest.fixture()
def no_settings(monkeypatch) -> None:
    monkeypatch.setattr(commands, "_model_settings", lambda args: None)


def test_analyze_json_and_out(tmp_path: Path, tiny_weights: Path, capsys, no_settings) -> None:
    _run(["synth", "--out", str(tmp_path / "s"), "--count", "2", "--seed", "9"])
    files = sorted(str(p) for p in (tmp_path / "s" / "images").iterdir())
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((128, 128, 3), 255, np.uint8))
    capsys.readouterr()
    code = _run(["analyze", *files, str(blank), "--json", "--out", str(tmp_path / "o"),
                 "--weights", str(tiny_weights), "--precision", "float32"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for record in lines:
        assert {"file", "stage", "probabilities", "blast_count", "blast_area_fraction", "quality",
                "needs_review"} <= set(record)
    assert lines[2]["stage"] is None and lines[2]["quality"]["status"] == "insufficient"
    assert Path(lines[0]["mask_png"]).is_file() and Path(lines[0]["overlay_png"]).is_file()


def test_analyze_reports_unreadable_files(tmp_path: Path, tiny_weights: Path, capsys,
                                          no_settings) -> None:
    code = _run(["analyze", str(tmp_path / "missing.png"), "--json", "--weights",
                 str(tiny_weights)])
    assert code == 1
    assert "error" in json.loads(capsys.readouterr().out.splitlines()[-1])


def test_evaluate_command(tmp_path: Path, tiny_weights: Path, capsys, no_settings) -> None:
    _run(["synth", "--out", str(tmp_path), "--count", "8", "--seed", "5"])
    capsys.readouterr()
    assert _run(["evaluate", str(tmp_path), "--weights", str(tiny_weights)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "confusion_matrix", "mean_dice", "ece", "per_class"):
        assert key in report
    assert report["n"] == 8


def test_bad_weights_exit_1(tmp_path: Path, capsys, no_settings) -> None:
    code = _run(["analyze", "x.png", "--weights", str(tmp_path / "manifest.json")])
    assert code == 1
    assert "model error" in capsys.readouterr().err


def test_analyze_dicom_out_goes_on_after_an_unexpected_error(tmp_path, capsys, monkeypatch,
                                                            tiny_weights) -> None:
    import bcd_node.analysis.findings
    from bcd_node.cli import main

    manifest = tiny_weights
    first, second = write_smears(tmp_path / "in", 2)
    broken = str(pydicom.dcmread(first).SOPInstanceUID)
    analyze = bcd_node.analysis.findings.analyze_dataset

    def analyze_or_fail(ds, *args, **kwargs):
        if str(ds.SOPInstanceUID) == broken:
            raise RuntimeError("a builder failed")
        return analyze(ds, *args, **kwargs)

    monkeypatch.setattr(bcd_node.analysis.findings, "analyze_dataset", analyze_or_fail)
    out = tmp_path / "out"
    code = main(["analyze", str(first), str(second), "--weights", str(manifest), "--json",
                 "--dicom-out", str(out), "--precision", "float32"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 1
    assert lines[0] == {"file": str(first), "error": "RuntimeError: a builder failed"}
    assert lines[1]["file"] == str(second) and len(lines[1]["dicom_outputs"]) == 3


def test_evaluate_shifts_prints_its_table(capsys, no_settings) -> None:
    from bcd_node.inference.shifts import suite

    assert _run(["evaluate", "--shifts", "--count", "4", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| shift |"))
    for column in ("accuracy answered", "refused", "flagged", "accuracy not flagged",
                   "confidently wrong"):
        assert column in header
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line
            and line != header]
    assert [row.split(" | ")[0][2:] for row in rows] == [s.name for s in suite()]
    assert all(row.split(" | ")[1] == "4" for row in rows)
    # Without the pixel size stated every answered field needs review ("scale unknown").
    unstated = next(r for r in rows if r.startswith("| magnification x1.33, no pixel spacing"))
    cells = unstated.split(" | ")
    assert float(cells[3]) + float(cells[4]) == 1.0 and cells[7] == "0.000"
    assert "Reproduce: bcd-node evaluate --shifts --count 4 --seed 3" in out


def test_train_refuses_a_scale_range_without_1(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--robust-scale"):
        _run(["train", str(tmp_path), "--out", str(tmp_path / "out"), "--augment", "robust",
              "--robust-scale", "1.1", "1.3"])
    with pytest.raises(ValidationError, match="--robust-scale-p"):
        _run(["train", str(tmp_path), "--out", str(tmp_path / "out"), "--augment", "robust",
              "--robust-scale-p", "1.5"])


def test_evaluate_needs_data_or_a_suite(capsys, no_settings) -> None:
    assert _run(["evaluate"]) == 2
    assert "--shifts" in capsys.readouterr().err


@pytest.mark.slow
def test_train_command_with_robust_augmentation(tmp_path: Path, capsys) -> None:
    from bcd_node.inference import synth
    from bcd_node.inference.loader import load_model
    synth.write_dataset(tmp_path / "data", 32, 8, size=128, fields_per_patient=4)
    out = tmp_path / "out"
    assert _run(["train", str(tmp_path / "data"), "--out", str(out), "--width", "0.0625",
                 "--input-size", "64", "--field-size", "128", "--epochs", "1",
                 "--batch-size", "8", "--val-fraction", "0.25", "--augment", "robust",
                 "--um-per-pixel", "0.5", "--robust-scale", "0.9", "1.1",
                 "--robust-scale-p", "0.2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["augment"] == "robust"
    assert manifest["training"]["augment_robust"]["blur_sigma"] == [0.0, 2.5]
    assert manifest["training"]["augment_robust"]["scale"] == [0.9, 1.1]
    assert manifest["training"]["augment_robust"]["p_scale"] == 0.2
    assert manifest["um_per_pixel"] == 0.5
    assert load_model(out / "manifest.json").manifest["sha256"] == manifest["sha256"]


def test_a_model_given_on_the_command_line_brings_its_operating_point(tmp_path: Path,
                                                                      no_settings) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "manifest.json").write_text(json.dumps({"review": {"confidence_threshold": 0.8}}))
    parser = _parser()
    args = parser.parse_args(["evaluate", "--shifts", "--weights", str(own / "manifest.json")])
    assert commands._predictor_options(args)["review_threshold"] == 0.8
    args = parser.parse_args(["analyze", "x.png", "--weights", str(own / "manifest.json"),
                              "--review-threshold", "0.5"])
    assert commands._predictor_options(args)["review_threshold"] == 0.5
    (own / "manifest.json").write_text("{}")  # a model without one: the settings' value
    args = parser.parse_args(["evaluate", "--shifts", "--weights", str(own / "manifest.json")])
    assert "review_threshold" not in commands._predictor_options(args)
