"""A compressed frame cut short is refused before the image is acknowledged (docs/conformance.md
2.3): a JPEG or JPEG-LS codestream ends with its EOI marker, a JPEG 2000 codestream with its EOC
marker (both FFD9), usually followed at most by a few bytes of padding (0x00, 0xFF), else by
more after its last scan or tile-part (a trailer a DICOMizer kept). The decoders fill a
cut JPEG's missing rows with flat grey without an error, so the intake checks the end marker
itself, without decoding; the end of a frame split over several fragments is the end of its last
fragment. RLE has no end marker: the length checks are its own."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments, generate_frames, parse_basic_offsets
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from bcd_node.intake.validate import InvalidImageError, validate_image
from dicom import pixels
from dicom.errors import DicomDecodeError
from tests.support import dicom_inputs as inputs
from tests.support.dicomizers import dcmtk, highdicom_wsi, img2dcm
from tests.support.images import part10_bytes

LIMITS = {"max_pixels": 100_000_000, "max_dataset_bytes": 256 * 1024 * 1024}
SC = "1.2.840.10008.5.1.4.1.1.7"
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"

#: Each codestream kind: its transfer syntax and the words of the refusal.
KINDS = {
    "jpeg_baseline": (JPEGBaseline8Bit, "JPEG codestream cut short (no EOI marker FFD9)"),
    "jpeg_extended": (JPEGExtended12Bit, "JPEG codestream cut short (no EOI marker FFD9)"),
    "jpeg_lossless": (JPEGLosslessSV1, "JPEG codestream cut short (no EOI marker FFD9)"),
    "jpeg_ls_lossless": (JPEGLSLossless, "JPEG-LS codestream cut short (no EOI marker FFD9)"),
    "jpeg_ls_near_lossless": (JPEGLSNearLossless,
                              "JPEG-LS codestream cut short (no EOI marker FFD9)"),
    "jpeg_2000_lossless": (JPEG2000Lossless,
                           "JPEG 2000 codestream cut short (no EOC marker FFD9)"),
    "jpeg_2000": (JPEG2000, "JPEG 2000 codestream cut short (no EOC marker FFD9)"),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> str:
    return request.param


def _compressed(smear_rgb: np.ndarray, kind: str, tmp_path) -> pydicom.Dataset:
    """A single-frame SC of ``smear_rgb`` in the kind's transfer syntax, as its encoder wrote
    it (JPEG baseline: Pillow; extended and lossless: DCMTK dcmcjpeg; JPEG-LS and JPEG 2000:
    pydicom's encoders)."""
    transfer_syntax = KINDS[kind][0]
    ds = inputs.make_image(smear_rgb, "RGB", 8)
    if transfer_syntax == JPEGBaseline8Bit:
        inputs.jpeg_baseline(ds, smear_rgb, "YBR_FULL")
        return ds
    if transfer_syntax in (JPEGExtended12Bit, JPEGLosslessSV1):
        native = inputs.write(ds, tmp_path / "native.dcm")
        option = "+ee" if transfer_syntax == JPEGExtended12Bit else "+e1"
        return pydicom.dcmread(dcmtk("dcmcjpeg", native, tmp_path / f"{kind}.dcm", option))
    return inputs.encode(ds, transfer_syntax)


def _codestream(ds: pydicom.Dataset) -> bytes:
    """The frame's codestream up to and with its end marker (any padding left off)."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return frame[: frame.rindex(b"\xff\xd9") + 2]


def _with_fragments(ds: pydicom.Dataset, fragments: list[bytes]) -> bytes:
    """The data set, its one frame made of ``fragments`` (each even, as PS3.5 A.4 wants), as
    the Part 10 bytes the intake is handed."""
    assert all(len(f) % 2 == 0 for f in fragments)
    items = b"".join(b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in fragments)
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + items  # an empty Basic Offset Table
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return part10_bytes(ds)


def _with_frame(ds: pydicom.Dataset, frame: bytes, fragments: int = 1) -> bytes:
    ds.PixelData = encapsulate([frame], fragments_per_frame=fragments)  # pads an odd end
    return part10_bytes(ds)


def _refused(data: bytes, words: str, frame: int = 0) -> str:
    with pytest.raises(InvalidImageError) as caught:
        validate_image(data, **LIMITS)
    message = str(caught.value)
    assert message == f"frame {frame}: {words}"
    assert len(message) <= 64  # the whole reason fits in the Error Comment
    return message


@pytest.mark.parametrize("fraction", [1 / 3, 2 / 3, 0.99])
def test_a_codestream_cut_short_is_refused(smear_rgb, tmp_path, kind, fraction):
    ds = _compressed(smear_rgb, kind, tmp_path)
    codestream = _codestream(ds)
    _refused(_with_frame(ds, codestream[: int(len(codestream) * fraction)]), KINDS[kind][1])


def test_a_codestream_without_only_its_end_marker_is_refused(smear_rgb, tmp_path, kind):
    """All the coded data, and no end marker (the decoders take it without a word)."""
    ds = _compressed(smear_rgb, kind, tmp_path)
    codestream = _codestream(ds)
    _refused(_with_frame(ds, codestream[:-2]), KINDS[kind][1])
    _refused(_with_frame(ds, codestream[:-1]), KINDS[kind][1])  # FF 00 (padded) at its end


def test_the_decoder_refuses_it_too(smear_rgb, tmp_path, kind):
    """The analysis reads through the same check (an image stored before it was made)."""
    ds = _compressed(smear_rgb, kind, tmp_path)
    data = _with_frame(ds, _codestream(ds)[:-2])
    with pytest.raises(DicomDecodeError, match="cut short"):
        pixels.decode_file(data)


@pytest.mark.parametrize("padding", [b"", b"\x00", b"\xff", b"\x00\x00\x00",
                                     b"\xff\xff\x00\x00", b"\x00" * 15])
def test_a_complete_codestream_is_accepted_with_its_padding(smear_rgb, tmp_path, kind,
                                                            padding):
    ds = _compressed(smear_rgb, kind, tmp_path)
    data = _with_frame(ds, _codestream(ds) + padding)
    assert validate_image(data, **LIMITS).SOPInstanceUID == ds.SOPInstanceUID
    assert pixels.decode_file(data).shape == (1, 96, 128, 3)


def test_data_after_a_complete_codestream_is_not_taken_for_a_cut(smear_rgb, tmp_path, kind):
    """A trailer a DICOMizer kept after the end marker (a camera's maker data, the boxes of a
    JP2 file, more padding): the codestream is whole; the same bytes after a cut one are not."""
    ds = _compressed(smear_rgb, kind, tmp_path)
    codestream = _codestream(ds)
    for after in (b"\x00" * 18, b"maker trailer\x01\x02\x03" * 4):
        data = _with_frame(ds, codestream + after)
        assert validate_image(data, **LIMITS).SOPInstanceUID == ds.SOPInstanceUID
        _refused(_with_frame(ds, codestream[: len(codestream) * 2 // 3] + after),
                 KINDS[kind][1])


def test_a_thumbnails_end_marker_does_not_complete_a_cut_jpeg(smear_rgb, tmp_path):
    """A camera's JPEG carries a whole JPEG, its thumbnail, in its APP1 segment, before the
    image's own scan: that end marker is not the image's."""
    ds = _compressed(smear_rgb, "jpeg_baseline", tmp_path)
    codestream = _codestream(ds)
    thumbnail = codestream  # any complete JPEG
    app1 = b"Exif\x00\x00" + thumbnail
    with_thumbnail = (codestream[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
                      + codestream[2:])
    whole = _with_frame(ds, with_thumbnail)
    assert validate_image(whole, **LIMITS).SOPInstanceUID == ds.SOPInstanceUID
    cut = with_thumbnail[: len(with_thumbnail) - len(codestream) // 3]
    _refused(_with_frame(ds, cut), KINDS["jpeg_baseline"][1])


@pytest.mark.parametrize("fragments", [2, 5])
def test_a_frame_of_several_fragments_ends_with_its_last_fragment(smear_rgb, tmp_path, kind,
                                                                  fragments):
    ds = _compressed(smear_rgb, kind, tmp_path)
    codestream = _codestream(ds)
    whole = _with_frame(ds, codestream, fragments)
    assert validate_image(whole, **LIMITS).SOPInstanceUID == ds.SOPInstanceUID
    _refused(_with_frame(ds, codestream[: len(codestream) * 2 // 3], fragments), KINDS[kind][1])


def test_an_end_marker_split_over_two_fragments_is_its_end(smear_rgb, tmp_path):
    """FF at the end of one fragment, D9 (and its pad byte) the next: still the end."""
    ds = _compressed(smear_rgb, "jpeg_baseline", tmp_path)
    codestream = _codestream(ds)
    if len(codestream) % 2 == 0:  # a fill byte (JPEG B.1.1.2) makes FF fall at an odd index
        codestream = codestream[:-2] + b"\xff\xff\xd9"
    head, tail = codestream[:-1], codestream[-1:] + b"\x00"
    assert head[-1:] == b"\xff" and tail == b"\xd9\x00"
    assert validate_image(_with_fragments(ds, [head[:600], head[600:], tail]), **LIMITS)
    _refused(_with_fragments(ds, [head[:600], head[600:]]), KINDS["jpeg_baseline"][1])


@pytest.mark.parametrize("option", ["+eb", "+e1"])
def test_dcmcjpeg_fragments_of_1_kb(smear_rgb, tmp_path, option):
    """``dcmcjpeg +fs 1``: 1 KB fragments, the EOI at the end of the last; that fragment lost,
    the frame is cut short."""
    native = inputs.write(inputs.make_image(smear_rgb, "RGB", 8), tmp_path / "native.dcm")
    made = dcmtk("dcmcjpeg", native, tmp_path / "fs1.dcm", option, "+fs", "1")
    ds = pydicom.dcmread(made)
    buffer = io.BytesIO(ds.PixelData)
    assert parse_basic_offsets(buffer) == [0]  # one frame
    fragments = list(generate_fragments(buffer))
    assert len(fragments) >= 3 and {len(f) for f in fragments[:-1]} == {1024}
    assert validate_image(made.read_bytes(), **LIMITS).SOPInstanceUID == ds.SOPInstanceUID
    _refused(_with_fragments(ds, fragments[:-1]),
             "JPEG codestream cut short (no EOI marker FFD9)")


def test_img2dcm_of_a_jpeg_cut_short_is_refused(smear_rgb, tmp_path):
    """The input found from outside: DCMTK img2dcm of a JPEG (its frame padded with 0x00),
    the frame cut to two thirds."""
    made = img2dcm(np.ascontiguousarray(smear_rgb), tmp_path, "sc")
    data = made.read_bytes()
    assert validate_image(data, **LIMITS)
    ds = pydicom.dcmread(made)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.endswith(b"\xff\xd9") or frame.endswith(b"\xff\xd9\x00")
    _refused(_with_frame(ds, frame[: len(frame) * 2 // 3]),
             "JPEG codestream cut short (no EOI marker FFD9)")


def test_a_whole_slide_image_with_one_tile_cut_short_is_refused(smear_rgb, tmp_path):
    """Every frame is checked before the image is acknowledged, not only the first."""
    rgb = np.ascontiguousarray(smear_rgb[:96, :96])
    made = highdicom_wsi(rgb, tmp_path / "wsi.dcm", tile=32, patient_id="WSI")
    assert validate_image(made.read_bytes(), WSI, **LIMITS)
    ds = pydicom.dcmread(made)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    assert len(frames) == 9
    frames[5] = frames[5][: len(frames[5]) // 2]
    ds.PixelData = encapsulate(frames)
    with pytest.raises(InvalidImageError,
                       match=r"^frame 5: JPEG codestream cut short \(no EOI marker FFD9\)$"):
        validate_image(part10_bytes(ds), WSI, **LIMITS)


def test_rle_and_native_frames_have_no_end_marker_to_check(smear_rgb):
    for transfer_syntax in (RLELossless, ExplicitVRLittleEndian):
        ds = inputs.encode(inputs.make_image(smear_rgb, "RGB", 8), transfer_syntax)
        assert validate_image(part10_bytes(ds), SC, **LIMITS)
