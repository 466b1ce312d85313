"""Malformed input raises the typed errors, never anything else, and never hangs."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom import pixels
from dicom.errors import DecompressionBombError, DicomDecodeError, DicomError, InflationLimitError
from tests.support import dicom_inputs as inputs
from tests.support.images import part10_bytes

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def valid_bytes(smear_rgb) -> bytes:
    return part10_bytes(inputs.make_image(smear_rgb, "RGB", 8))


@pytest.fixture
def compressed_bytes(smear_rgb) -> bytes:
    return part10_bytes(inputs.encode(inputs.make_image(smear_rgb, "RGB", 8), JPEGLSLossless))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 0.999])
def test_truncated_native_file(valid_bytes, fraction):
    cut = valid_bytes[: int(len(valid_bytes) * fraction)]
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(cut)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9, 0.99])
def test_truncated_compressed_file(compressed_bytes, fraction):
    cut = compressed_bytes[: int(len(compressed_bytes) * fraction)]
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(cut)


def test_garbage_is_not_dicom():
    rng = np.random.default_rng(1)
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(b"\0" * 128 + b"DICM" + b"\xff" * 64)


def test_missing_file_is_typed(tmp_path):
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(tmp_path / "absent.dcm")


@pytest.mark.parametrize("length", [0x7FFFFFF0, 0xFFFFFF00, 0x00100000])
def test_element_length_beyond_the_file(valid_bytes, length):
    # Patient ID (0010,0020) LO: tag, VR, 2-byte length in explicit VR little endian.
    marker = struct.pack("<HH", 0x0010, 0x0020) + b"LO"
    pos = valid_bytes.index(marker)
    # Turn it into an OB-style long element whose declared length runs past the end.
    broken = (
        valid_bytes[:pos]
        + struct.pack("<HH", 0x0010, 0x0020)
        + b"UN\0\0"
        + struct.pack("<I", length)
        + valid_bytes[pos + 8 :]
    )
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(broken)


def test_pixel_data_shorter_than_declared(smear_rgb):
    ds = inputs.make_image(smear_rgb, "RGB", 8)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(DicomDecodeError, match="Pixel Data has"):
        pixels.decode_file(part10_bytes(ds))


def _nested_sequences(depth: int) -> bytes:
    """Explicit VR LE body with ``depth`` nested undefined-length sequences."""
    open_sq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    open_item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_item = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (open_sq + open_item) * depth + (close_item + close_sq) * depth


@pytest.mark.parametrize("depth", [40, 400, 20000])
def test_deep_sequence_nesting(smear_rgb, depth):
    ds = inputs.make_image(smear_rgb[:8, :8], "RGB", 8)
    data = part10_bytes(ds)
    pos = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    nested = data[:pos] + _nested_sequences(depth) + data[pos:]
    with pytest.raises(DicomDecodeError, match="nesting"):
        pixels.decode_file(nested)


@pytest.mark.parametrize("depth", [33, 40])
def test_deep_sequence_nesting_on_the_fast_path(smear_rgb, depth):
    """The C-STORE fast path (no value conversion) bounds the nesting too."""
    ds = inputs.make_image(smear_rgb[:8, :8], "RGB", 8)
    data = part10_bytes(ds)
    pos = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    with pytest.raises(DicomDecodeError, match="nesting"):
        pixels.read_dataset(data[:pos] + _nested_sequences(depth) + data[pos:],
                            convert_all=False)
    shallow = data[:pos] + _nested_sequences(32) + data[pos:]
    assert pixels.read_dataset(shallow, convert_all=False).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("rows", "columns", "frames"),
    [(65535, 65535, 1), (4096, 4096, 10000), (1, 1, 2**31 - 1)],
)
def test_huge_declared_size_is_refused_before_decoding(smear_rgb, rows, columns, frames):
    ds = inputs.make_image(smear_rgb[:8, :8], "RGB", 8)
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    with pytest.raises(DecompressionBombError, match="exceeds the limit"):
        pixels.decode_file(part10_bytes(ds))


def test_limit_is_configurable(valid_bytes):
    with pytest.raises(DecompressionBombError):
        pixels.decode_file(valid_bytes, max_pixels=100)


def test_codestream_declaring_another_size_is_refused(smear_rgb):
    ds = inputs.encode(inputs.make_image(smear_rgb, "RGB", 8), JPEG2000Lossless)
    ds.Rows, ds.Columns = 32, 32  # the SIZ marker still says 96 x 128
    with pytest.raises(DicomDecodeError, match="codestream declares"):
        pixels.decode_file(part10_bytes(ds))


def test_corrupt_codestream_is_typed(smear_rgb):
    ds = inputs.encode(inputs.make_image(smear_rgb, "RGB", 8), JPEGLSLossless)
    sof55 = b"\xff\xd8\xff\xf7" + b"\x00\x0b\x08\x00\x60\x00\x80\x03"
    ds.PixelData = encapsulate([sof55 + b"\x13" * 500])
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(part10_bytes(ds))


def test_corrupt_rle_is_typed(smear_rgb):
    ds = inputs.encode(inputs.make_image(smear_rgb, "RGB", 8), RLELossless)
    ds.PixelData = encapsulate([struct.pack("<16I", 3, 64, 70, 80, *([0] * 12)) + b"\x7f" * 40])
    with pytest.raises(DicomDecodeError):
        pixels.decode_file(part10_bytes(ds))


def test_missing_encapsulated_frames(smear_rgb):
    stack = np.stack([smear_rgb] * 3)
    source = inputs.make_image(stack, "RGB", 8, sop_class="1.2.840.10008.5.1.4.1.1.7.4")
    ds = inputs.encode(source, RLELossless)
    ds.NumberOfFrames = 5
    with pytest.raises(DicomError):
        pixels.decode_file(part10_bytes(ds))


def _deflated_image() -> tuple[bytes, int]:
    """An 8 x 8 image as a Part 10 file in Deflated Explicit VR Little Endian, and the offset
    where its data set starts (after the file meta information)."""
    ds = inputs.make_image(np.zeros((8, 8, 3), dtype=np.uint8), "RGB", 8)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    data = part10_bytes(ds)
    return data, 132 + 12 + struct.unpack("<I", data[140:144])[0]


def _deflated_zeros(size: int) -> bytes:
    """A deflated data set of one private OB element of ``size`` zero bytes."""
    body = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.compress(bytes(size)) + compressor.flush()


def test_deflate_bomb_is_refused(tmp_path):
    data, meta_end = _deflated_image()
    # 64 MiB of private OB zeros, deflated to a few tens of kilobytes.
    bomb = _deflated_zeros(64 * 2**20)
    assert len(bomb) < 200_000
    with pytest.raises(DecompressionBombError, match="inflates"):
        pixels.read_dataset(bytes(data[:meta_end]) + bomb, max_pixels=1000)


def test_deflated_inflation_limit_is_configurable():
    data, meta_end = _deflated_image()
    bomb = _deflated_zeros(4 * 2**20)
    with pytest.raises(InflationLimitError, match="more than 1048576 bytes"):
        pixels.read_dataset(bytes(data[:meta_end]) + bomb, max_inflated_bytes=2**20)
    with pytest.raises(ValueError, match="max_inflated_bytes"):
        pixels.read_dataset(bytes(data), max_inflated_bytes=0)


def test_file_object_must_be_binary(tmp_path):
    with pytest.raises(TypeError):
        pixels.read_dataset(io.StringIO("DICM"))
    with pytest.raises(TypeError):
        pixels.read_dataset(12345)


def test_oversized_file_is_refused_before_reading(tmp_path, valid_bytes):
    path = tmp_path / "big.dcm"
    path.write_bytes(valid_bytes)
    os.truncate(path, 40 * 2**20)  # sparse: cheap to make, larger than 10 pixels + headroom
    with pytest.raises(DecompressionBombError, match="bytes exceeds"):
        pixels.read_dataset(path, max_pixels=10)
    with pytest.raises(DecompressionBombError, match="bytes exceeds"):
        pixels.read_dataset(valid_bytes + bytes(17 * 2**20), max_pixels=10)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 0.999])
def test_structure_check_alone_refuses_truncation(valid_bytes, fraction):
    """The C-STORE fast path (no value conversion, no decoding of native RGB) still refuses a
    truncated file: read_dataset(convert_all=False) checks element lengths, inspect_image the
    Pixel Data length."""
    cut = valid_bytes[: int(len(valid_bytes) * fraction)]
    with pytest.raises(DicomError):
        pixels.inspect_image(pixels.read_dataset(cut, convert_all=False))


@pytest.mark.parametrize("length", [0x7FFFFFF0, 0x00100000])
def test_structure_check_alone_refuses_long_elements(valid_bytes, length):
    marker = struct.pack("<HH", 0x0010, 0x0020) + b"LO"
    pos = valid_bytes.index(marker)
    broken = (valid_bytes[:pos] + struct.pack("<HH", 0x0010, 0x0020) + b"UN\0\0"
              + struct.pack("<I", length) + valid_bytes[pos + 8:])
    with pytest.raises(DicomDecodeError):
        pixels.read_dataset(broken, convert_all=False)
