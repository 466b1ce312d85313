"""Reading: every accepted photometric interpretation x transfer syntax decodes to RGB uint8."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom import pixels, sop
from dicom.errors import DicomDecodeError, DicomError, UnsupportedDicomError
from tests.support import dicom_inputs as inputs

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
LOSSY = {JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000}

KINDS = {
    # kind: (photometric, bits stored)
    "RGB8": ("RGB", 8),
    "RGB16": ("RGB", 12),
    "YBR_FULL": ("YBR_FULL", 8),
    "YBR_FULL_422": ("YBR_FULL_422", 8),
    "MONO1_8": ("MONOCHROME1", 8),
    "MONO2_8": ("MONOCHROME2", 8),
    "MONO1_16": ("MONOCHROME1", 12),
    "MONO2_16": ("MONOCHROME2", 12),
    "PALETTE8": ("PALETTE COLOR", 8),
}

COMBINATIONS = (
    [(kind, ts) for ts in NATIVE for kind in KINDS]
    + [(kind, RLELossless) for kind in KINDS if kind != "YBR_FULL_422"]
    + [(kind, JPEGBaseline8Bit) for kind in ("YBR_FULL", "YBR_FULL_422", "MONO1_8", "MONO2_8")]
    + [
        (kind, JPEGLSLossless)
        for kind in ("RGB8", "YBR_FULL", "MONO1_8", "MONO2_8", "MONO1_16", "MONO2_16", "PALETTE8")
    ]
    + [("RGB8", JPEGLSNearLossless), ("MONO2_16", JPEGLSNearLossless)]
    + [
        (kind, JPEG2000Lossless)
        for kind in ("RGB8", "MONO1_8", "MONO2_8", "MONO1_16", "MONO2_16", "PALETTE8")
    ]
    + [("RGB8", JPEG2000), ("MONO2_16", JPEG2000)]
)


def _stretch(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def build_input(kind: str, ts: str, rgb: np.ndarray):
    """Return (dataset in ``ts``, expected RGB, tolerance of the mean absolute difference)."""
    photometric, bits = KINDS[kind]
    grey = rgb[..., 1]
    if kind == "YBR_FULL_422":
        rgb = np.repeat(rgb[:, 0::2], 2, axis=1)  # chroma constant over each pixel pair
    if ts == JPEGBaseline8Bit:
        mono = photometric.startswith("MONO")
        ds = inputs.make_image(grey if mono else rgb, "MONOCHROME2" if mono else "RGB", 8)
        if mono:
            stored = grey if photometric == "MONOCHROME2" else 255 - grey
            inputs.jpeg_baseline(ds, stored, photometric)
            return ds, np.repeat(grey[..., None], 3, axis=-1), 3.0
        inputs.jpeg_baseline(ds, rgb, photometric)
        return ds, rgb, 6.0

    tolerance = 0.0
    if kind == "RGB8":
        ds, expected = inputs.make_image(rgb, "RGB", 8), rgb
    elif kind == "RGB16":
        ds, expected = inputs.make_image(rgb.astype(np.uint16) << 4 | 5, "RGB", 12), rgb
    elif kind == "YBR_FULL":
        ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds, expected, tolerance = inputs.make_image(ybr, "YBR_FULL", 8), rgb, 1.5
    elif kind == "YBR_FULL_422":
        ds = inputs.make_image(rgb, "YBR_FULL_422", 8)
        ds.PixelData = inputs.ybr422_bytes(rgb)
        expected, tolerance = rgb, 1.5
    elif kind in ("MONO1_8", "MONO2_8"):
        stored = grey if photometric == "MONOCHROME2" else 255 - grey
        ds, expected = inputs.make_image(stored, photometric, 8), np.repeat(grey[..., None], 3, -1)
    elif kind in ("MONO1_16", "MONO2_16"):
        values = grey.astype(np.uint16) * 16 + 3
        ds = inputs.make_image(values, photometric, 12)
        shown = _stretch(values)
        if photometric == "MONOCHROME1":
            shown = 255 - shown
        expected = np.repeat(shown[..., None], 3, -1)
    elif kind == "PALETTE8":
        ds = inputs.make_image(grey, "PALETTE COLOR", 8)
        lut = inputs.palette(ds, 8)
        expected = (lut[grey] >> 8).astype(np.uint8)
    else:  # pragma: no cover
        raise AssertionError(kind)
    inputs.encode(ds, ts)
    if ts in LOSSY:
        tolerance = max(tolerance, 4.0)
    return ds, expected, tolerance


@pytest.mark.parametrize(
    ("kind", "ts"), COMBINATIONS, ids=[f"{k}-{pydicom.uid.UID(t).keyword}" for k, t in COMBINATIONS]
)
def test_every_photometric_and_transfer_syntax_decodes(tmp_path, smear_rgb, kind, ts):
    ds, expected, tolerance = build_input(kind, ts, smear_rgb)
    path = inputs.write(ds, tmp_path / "in.dcm")

    back = pixels.read_dataset(path)
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.PhotometricInterpretation == KINDS[kind][0]
    frames = pixels.decode_frames(back)

    assert frames.dtype == np.uint8
    assert frames.shape == (1, *smear_rgb.shape)
    diff = np.abs(frames[0].astype(np.int16) - expected.astype(np.int16))
    if tolerance == 0:
        np.testing.assert_array_equal(frames[0], expected)
    else:
        assert diff.mean() <= tolerance, f"mean abs difference {diff.mean():.2f}"


def test_monochrome_window_is_applied(tmp_path):
    values = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    ds = inputs.make_image(values, "MONOCHROME2", 12)
    ds.WindowCenter = 2048
    ds.WindowWidth = 1024
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "w.dcm"))
    grey = pixels.decode_frames(back)[0, ..., 0]
    assert grey[values <= 1535].max() == 0
    assert grey[values >= 2560].min() == 255
    middle = grey[(values > 1700) & (values < 2400)]
    assert 0 < middle.min() < middle.max() < 255


@pytest.mark.parametrize(
    ("name", "ts", "photometric"),
    [
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "MONOCHROME2"),
        ("GDCMJ2K_TextGBR.dcm", "1.2.840.10008.1.2.4.90", "YBR_RCT"),
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "YBR_FULL"),
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "1.2.840.10008.1.2.4.50", "YBR_FULL_422"),
        ("SC_jpeg_no_color_transform.dcm", "1.2.840.10008.1.2.4.50", "RGB"),
        ("SC_rgb_jls_lossy_line.dcm", "1.2.840.10008.1.2.4.81", "RGB"),
    ],
)
def test_syntaxes_without_encoder_here_decode_from_pydicom_files(name, ts, photometric):
    ds = pixels.read_dataset(get_testdata_file(name))
    assert ds.file_meta.TransferSyntaxUID == ts
    assert ds.PhotometricInterpretation == photometric
    frames = pixels.decode_frames(ds)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert frames.max() > frames.min()


def test_colour_test_pattern_is_rgb():
    """dcmtk's YBR and RGB encodings of the same pattern decode to the same RGB."""
    reference = pixels.decode_file(get_testdata_file("SC_rgb_rle.dcm"))
    names = ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    for name in names:
        decoded = pixels.decode_file(get_testdata_file(name))
        assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 3, name


#: pydicom test files of accepted SOP classes, syntaxes and photometrics that must decode.
MUST_DECODE = {
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_dcmd.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "GDCMJ2K_TextGBR.dcm",
}

#: Accepted-looking files that are refused on purpose, with the reason.
MUST_REFUSE = {
    "SC_rgb_rle_32bit.dcm": UnsupportedDicomError,  # 32 bits allocated
    "SC_rgb_rle_32bit_2frame.dcm": UnsupportedDicomError,
    "SC_rgb_small_odd_big_endian.dcm": UnsupportedDicomError,  # retired big endian syntax
    "JPEG2000-embedded-sequence-delimiter.dcm": DicomDecodeError,  # SIZ declares 3.7e9 columns
    "CT_small.dcm": UnsupportedDicomError,  # SOP class not accepted
    "rtstruct.dcm": DicomDecodeError,  # no Part 10 header
    "crayons.icc": DicomDecodeError,
    # the body is implicit VR under an explicit VR transfer syntax: refused in strict mode
    "SC_rgb_jpeg.dcm": DicomDecodeError,
}

TESTDATA = sorted(f for f in get_testdata_files() if os.path.isfile(f))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", TESTDATA, ids=[os.path.basename(f) for f in TESTDATA])
def test_pydicom_testdata_decodes_or_raises_typed_error(path):
    name = os.path.basename(path)
    try:
        frames = pixels.decode_file(path)
    except DicomError as exc:
        assert name not in MUST_DECODE, f"{name} should decode: {exc}"
        if name in MUST_REFUSE:
            assert isinstance(exc, MUST_REFUSE[name])
        assert str(exc)
        return
    assert name not in MUST_REFUSE
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3


def test_multiframe_is_iterated_by_frame(tmp_path, smear_rgb):
    stack = np.stack([smear_rgb, smear_rgb[::-1], 255 - smear_rgb])
    ds = inputs.make_image(stack, "RGB", 8, sop_class=sop.MULTIFRAME_TRUE_COLOR_SC_IMAGE)
    inputs.encode(ds, RLELossless)
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "mf.dcm"))
    frames = list(pixels.iter_frames(back))
    assert len(frames) == 3
    for got, want in zip(frames, stack):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pixels.decode_frames(back), stack)


@pytest.mark.parametrize("tiled_full", [True, False])
def test_whole_slide_tiles_are_assembled(tmp_path, smear_rgb, tiled_full):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    total = smear_rgb[:80, :120]  # 2 x 3 tiles of 48 x 48, clipped at the edges
    tile = 48
    tiles, positions = [], []
    for r in range(0, 80, tile):
        for c in range(0, 120, tile):
            block = np.zeros((tile, tile, 3), dtype=np.uint8)
            part = total[r : r + tile, c : c + tile]
            block[: part.shape[0], : part.shape[1]] = part
            tiles.append(block)
            positions.append((r, c))
    order = list(range(len(tiles))) if tiled_full else list(reversed(range(len(tiles))))
    ds = inputs.make_image(
        np.stack([tiles[i] for i in order]), "RGB", 8, sop_class=sop.VL_WHOLE_SLIDE_MICROSCOPY_IMAGE
    )
    ds.TotalPixelMatrixRows = 80
    ds.TotalPixelMatrixColumns = 120
    if tiled_full:
        ds.DimensionOrganizationType = "TILED_FULL"
    else:
        ds.DimensionOrganizationType = "TILED_SPARSE"
        items = []
        for i in order:
            plane = Dataset()
            plane.RowPositionInTotalImagePixelMatrix = positions[i][0] + 1
            plane.ColumnPositionInTotalImagePixelMatrix = positions[i][1] + 1
            item = Dataset()
            item.PlanePositionSlideSequence = Sequence([plane])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    inputs.encode(ds, JPEGLSLossless)
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "wsi.dcm"))
    assert len(list(pixels.iter_frames(back))) == 6
    np.testing.assert_array_equal(pixels.assemble_total_pixel_matrix(back), total)


def test_whole_slide_images_that_are_not_analysed_are_named(tmp_path, smear_rgb):
    """A slide larger than 4096 on a side, of two focal planes or optical paths, or a label
    image is refused by the reader with its reason; a small single-plane one is assembled."""
    from pydicom.uid import ExplicitVRLittleEndian

    from tests.support.dicomizers import highdicom_wsi

    rgb = np.ascontiguousarray(smear_rgb[:96, :96])
    small = highdicom_wsi(rgb, tmp_path / "small.dcm", tile=32, patient_id="WSI",
                          transfer_syntax=ExplicitVRLittleEndian)
    np.testing.assert_array_equal(
        pixels.assemble_total_pixel_matrix(pixels.read_dataset(small)), rgb)
    flat = np.full((64, 64, 3), 200, np.uint8)
    for name, options, reason in (
            ("large", {"total": (4097, 1000), "tile": 512},
             "whole-slide image 4097x1000 exceeds 4096x4096: not analysed"),
            ("planes", {"focal_planes": 2, "tile": 32}, "2 focal planes: only a slide of one"),
            ("paths", {"optical_paths": 2, "tile": 32}, "2 optical paths: only a slide of one")):
        path = highdicom_wsi(flat, tmp_path / f"{name}.dcm", patient_id="WSI", **options)
        ds = pixels.read_dataset(path)
        with pytest.raises(UnsupportedDicomError, match=reason):
            pixels.inspect_image(ds)
        with pytest.raises(UnsupportedDicomError, match=reason):
            pixels.assemble_total_pixel_matrix(ds)
    label = pixels.read_dataset(small)
    label.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    with pytest.raises(UnsupportedDicomError, match="LABEL image of a slide, not the smear"):
        pixels.inspect_image(label)


@pytest.mark.parametrize(
    "sop_class",
    [
        sop.VL_MICROSCOPIC_IMAGE,
        sop.VL_SLIDE_COORDINATES_MICROSCOPIC_IMAGE,
        sop.VL_PHOTOGRAPHIC_IMAGE,
        sop.SECONDARY_CAPTURE_IMAGE,
    ],
)
def test_accepted_sop_classes(tmp_path, smear_rgb, sop_class):
    ds = inputs.make_image(smear_rgb, "RGB", 8, sop_class=sop_class)
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "x.dcm"))
    assert pixels.inspect_image(back).sop_class_uid == sop_class
    np.testing.assert_array_equal(pixels.decode_frames(back)[0], smear_rgb)


def test_unsupported_sop_class_is_named(tmp_path, smear_rgb):
    ds = inputs.make_image(smear_rgb, "RGB", 8, sop_class="1.2.840.10008.5.1.4.1.1.2")
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "ct.dcm"))
    with pytest.raises(UnsupportedDicomError, match=r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.2"):
        pixels.decode_frames(back)


def test_unsupported_photometric_is_named(tmp_path, smear_rgb):
    ds = inputs.make_image(smear_rgb, "RGB", 8)
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    back = pixels.read_dataset(inputs.write(ds, tmp_path / "p.dcm"))
    with pytest.raises(UnsupportedDicomError, match="YBR_PARTIAL_420"):
        pixels.decode_frames(back)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_max_pixels_is_validated(bad):
    with pytest.raises(ValueError, match="max_pixels"):
        pixels.read_dataset(b"", max_pixels=bad)
