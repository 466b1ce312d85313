"""``bcd-node import`` and the function beneath it."""

from __future__ import annotations

import argparse

import numpy as np
import pydicom
import pytest
from PIL import Image

from bcd_node.cli import dicom_commands
from dicom import pixels, sop
from tests.support.dicomcheck import assert_dciodvfy_clean


@pytest.fixture
def png(tmp_path, smear_rgb):
    path = tmp_path / "smear.png"
    Image.fromarray(smear_rgb).save(path)
    return path


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "bcd-node.toml"
    path.write_text('[uids]\nroot = "1.2.3.4"\n')
    return path


@pytest.mark.integration
def test_import_png_as_vl_microscopic(tmp_path, png, smear_rgb):
    out = tmp_path / "out" / "smear.dcm"
    uid = dicom_commands.import_image(
        png, out, patient_id="P1", patient_name="Doe^Jane", specimen_id="SLIDE-1",
        stain="Wright-Giemsa", accession_number="A1", birth_date="1990-05-06", sex="F",
    )
    assert_dciodvfy_clean(out)
    back = pydicom.dcmread(out)
    assert back.SOPInstanceUID == uid
    assert back.SOPClassUID == sop.VL_MICROSCOPIC_IMAGE
    assert back.PatientID == "P1"
    assert (back.AccessionNumber, back.ContainerIdentifier) == ("A1", "SLIDE-1")
    assert back.LossyImageCompression == "00"
    np.testing.assert_array_equal(pixels.decode_file(out)[0], smear_rgb)
    assert not list(out.parent.glob(".import-*"))


@pytest.mark.integration
def test_import_jpeg_as_secondary_capture(tmp_path, smear_rgb):
    jpeg = tmp_path / "smear.jpg"
    Image.fromarray(smear_rgb).save(jpeg, quality=90)
    out = tmp_path / "sc.dcm"
    dicom_commands.import_image(jpeg, out, patient_id="P2", patient_name="Roe^R",
                                secondary_capture=True, uid_root="1.2.3.4")
    assert_dciodvfy_clean(out)
    back = pydicom.dcmread(out)
    assert back.SOPClassUID == sop.SECONDARY_CAPTURE_IMAGE
    assert back.SOPInstanceUID.startswith("1.2.3.4.")
    assert back.LossyImageCompression == "01"


def test_not_an_image_fails(tmp_path):
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"not a picture")
    with pytest.raises(dicom_commands.ImportFailed, match="not a readable"):
        dicom_commands.import_image(bogus, tmp_path / "o.dcm", patient_id="P",
                                    patient_name="A^B", secondary_capture=True)
    with pytest.raises(dicom_commands.ImportFailed, match="does not exist"):
        dicom_commands.read_picture(tmp_path / "absent.png")
    gif = tmp_path / "x.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(dicom_commands.ImportFailed, match="GIF"):
        dicom_commands.read_picture(gif)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcd-node")
    parser.add_argument("--config")
    dicom_commands.register(parser.add_subparsers(dest="command"))
    return parser


def test_register_adds_import_with_handler(png, tmp_path, config):
    args = _parser().parse_args([
        "--config", str(config), "import", str(png), "--out", str(tmp_path / "a.dcm"),
        "--patient-id", "P1", "--patient-name", "Doe^Jane", "--specimen-id", "S1",
        "--accession", "A9", "--stain", "Giemsa", "--birth-date", "1990-01-02", "--sex", "F",
    ])
    assert args.func is dicom_commands.cmd_import
    assert args.func(args) == 0
    back = pydicom.dcmread(tmp_path / "a.dcm")
    assert back.SOPInstanceUID.startswith("1.2.3.4.")  # settings.uids.root
    assert back.AccessionNumber == "A9"


def test_handler_exit_codes(png, tmp_path, config, capsys):
    parser = _parser()
    base = ["--config", str(config), "import", str(png), "--out", str(tmp_path / "b.dcm"),
            "--patient-id", "P1", "--patient-name", "Doe^Jane"]
    args = parser.parse_args(base)  # no slide id and no --secondary-capture
    assert args.func(args) == 2
    assert "specimen_id" in capsys.readouterr().err
    args = parser.parse_args(base + ["--secondary-capture"])
    assert args.func(args) == 0
    args = parser.parse_args(base + ["--secondary-capture", "--birth-date", "tomorrow"])
    assert args.func(args) == 2
    missing = parser.parse_args(["--config", str(config), "import", str(tmp_path / "none.png"),
                                 "--out", str(tmp_path / "c.dcm"), "--patient-id", "P",
                                 "--patient-name", "A^B", "--secondary-capture"])
    assert missing.func(missing) == 1


def test_cli_main_runs_import(png, tmp_path, config):
    cli = pytest.importorskip("bcd_node.cli")
    out = tmp_path / "main.dcm"
    code = cli.main(["--config", str(config), "import", str(png), "--out", str(out),
                     "--patient-id", "P1", "--patient-name", "Doe^Jane", "--secondary-capture"])
    assert code == 0
    assert pydicom.dcmread(out).SOPInstanceUID.startswith("1.2.3.4.")


@pytest.mark.integration
@pytest.mark.parametrize(("option", "expected"), [
    ([], 0.25),                                # [model] default_um_per_pixel
    (["--um-per-pixel", "0.3"], 0.3),
    (["--um-per-pixel", "0"], None),           # unknown: no Pixel Spacing
])
def test_import_writes_pixel_spacing(png, tmp_path, config, option, expected):
    cli = pytest.importorskip("bcd_node.cli")
    out = tmp_path / "spaced.dcm"
    code = cli.main(["--config", str(config), "import", str(png), "--out", str(out),
                     "--patient-id", "P1", "--patient-name", "Doe^Jane",
                     "--specimen-id", "S-1", *option])
    assert code == 0
    assert_dciodvfy_clean(out)
    back = pydicom.dcmread(out)
    if expected is None:
        assert "PixelSpacing" not in back
    else:
        assert [float(v) for v in back.PixelSpacing] == pytest.approx([expected / 1000] * 2)
