"""Inputs as real DICOMizers write them: DCMTK ``img2dcm`` (Secondary Capture without Modality,
``-nsc`` Multi-frame True Colour SC of one frame), a Japanese name in ``\\ISO 2022 IR 87``, a
multi-frame SC of several frames without a Frame of Reference, and :func:`build_corpus`, issue
14's corpus of more than 25 kinds of input made with DCMTK's tools and pydicom's encoders, each
with the answer the node owes it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from tests.support.listener import ENV
from tests.support.tools import require_tool

__all__ = ["DIAGNOSTIC", "JAPANESE_NAME", "NON_DIAGNOSTIC", "REFUSED", "CorpusInput",
           "build_corpus", "dcmtk", "img2dcm", "japanese_name",
           "multiframe_without_frame_of_reference", "pydicom_image"]

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def img2dcm(rgb: np.ndarray, folder: Path, name: str, *options: str,
            image_format: str = "JPEG") -> Path:
    """``img2dcm [options]`` of ``rgb`` written as a JPEG (or BMP): the file it makes."""
    exe = require_tool("img2dcm")
    folder.mkdir(parents=True, exist_ok=True)
    picture = folder / f"{name}.{'jpg' if image_format == 'JPEG' else 'bmp'}"
    if image_format == "JPEG":
        Image.fromarray(rgb).save(picture, quality=95)
    else:
        Image.fromarray(rgb).save(picture)
    out = folder / f"{name}.dcm"
    done = subprocess.run([exe, "-i", image_format, *options, str(picture), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return out


def japanese_name(path: Path, out: Path) -> Path:
    """The DICOMizer's file ``path`` with a Japanese patient name in ``\\ISO 2022 IR 87`` (the
    usual form, first value empty), new UIDs and Modality OT, written to ``out``."""
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE_NAME
    ds.PatientID = "JP-1"
    ds.Modality = "OT"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.save_as(out, enforce_file_format=True)
    return out


def multiframe_without_frame_of_reference(rgb: np.ndarray, out: Path, frames: int = 2) -> Path:
    """A Multi-frame True Colour SC of ``frames`` frames of ``rgb``, without Frame of Reference."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "SeriesNumber", "InstanceNumber", "PatientOrientation"):
        setattr(ds, keyword, "")
    ds.PatientID = "MF-1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 100
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.stack([rgb] * frames).tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


# --- The corpus of issue 14: at least 25 kinds of input, each made by a tool nobody here wrote
# (DCMTK, pydicom's encoders, highdicom), each with the answer the node owes it.

#: Expected outcomes of a corpus input.
REFUSED, DIAGNOSTIC, NON_DIAGNOSTIC = "refused", "diagnostic", "non_diagnostic"


@dataclass(frozen=True)
class CorpusInput:
    """One input of the corpus: its file, how it was made, and what the node owes it.

    ``expected`` is :data:`REFUSED` (``reason`` is a substring of the Error Comment),
    :data:`DIAGNOSTIC` (SEG, SR and PDF at the PACS) or :data:`NON_DIAGNOSTIC` (the quality
    gate refuses it: an SR and a PDF saying why)."""

    kind: str
    path: Path
    expected: str
    reason: str = ""


def dcmtk(tool: str, source: Path, out: Path, *options: str) -> Path:
    """Run the DCMTK converter ``tool`` (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv) on ``source``."""
    done = subprocess.run([require_tool(tool), *options, str(source), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert done.returncode == 0, f"{tool} {options}: {done.stderr}"
    return out


def _rarely_written(rgb: np.ndarray, folder: Path) -> dict[str, Path]:
    """VL Microscopic Images (the node's own DICOMizer's, then changed): a VL Slide-Coordinates
    Microscopic Image (a Frame of Reference and a place on the slide, no whole-slide
    orientation); a Pixel Spacing of one value, and one of text (DCMTK's dcmodify writes it);
    a container without a described specimen; the Specific Character Set
    ``ISO_IR 100\\ISO_IR 192`` (several values that are not ISO 2022 code extensions)."""
    from dicom.dicomize import dicomize

    def vl(kind: str, **values: object) -> Path:
        ds = dicomize(rgb, patient_id=kind.upper()[:16], patient_name="Müller^Jürgen",
                      specimen_id=f"SLIDE-{kind}"[:16], stain="Wright-Giemsa")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        path = folder / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    centre = Dataset()
    centre.XOffsetInSlideCoordinateSystem = 12.5
    centre.YOffsetInSlideCoordinateSystem = 40.0
    centre.ZOffsetInSlideCoordinateSystem = 0.0
    made = {
        "slide_coordinates": vl("slide_coordinates",
                                SOPClassUID="1.2.840.10008.5.1.4.1.1.77.1.3",
                                FrameOfReferenceUID=generate_uid(prefix="2.25."),
                                PositionReferenceIndicator="SLIDE_CORNER",
                                ImageCenterPointCoordinatesSequence=[centre],
                                PixelSpacing=[0.00025, 0.00025]),
        "pixel_spacing_one_value": vl("pixel_spacing_one_value", PixelSpacing=0.00025),
        "specimen_not_described": vl("specimen_not_described", SpecimenDescriptionSequence=[]),
        "charset_not_iso_2022": vl("charset_not_iso_2022",
                                   SpecificCharacterSet=["ISO_IR 100", "ISO_IR 192"]),
    }
    text = vl("pixel_spacing_text")
    subprocess.run([require_tool("dcmodify"), "-nb", "-i", "(0028,0030)=abc\\def", str(text)],
                   check=True, timeout=60, capture_output=True, env=ENV)
    made["pixel_spacing_text"] = text
    return made


def _renew(ds: Dataset, patient_id: str) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.PatientID = patient_id
    return ds


def pydicom_image(arr: np.ndarray, photometric: str, bits_stored: int, out: Path, *,
                  patient_id: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.7",
                  frames: int = 1, charset: str | list[str] | None = None,
                  patient_name: str = "", frame_of_reference: bool = False) -> Path:
    """A Secondary Capture (or multi-frame SC) written by pydicom's own encoders:
    ``arr`` holds the stored values in ``photometric`` (``frames`` copies of it), with a Frame
    of Reference if asked."""
    from pydicom.pixels.utils import set_pixel_data

    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber",
                    "InstanceNumber", "PatientOrientation"):
        setattr(ds, keyword, "")
    ds.PatientName = patient_name
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    _renew(ds, patient_id)
    data = np.stack([arr] * frames) if frames > 1 else arr
    set_pixel_data(ds, data, "RGB" if photometric == "YBR_FULL_422" else photometric,
                   bits_stored, generate_instance_uid=False)
    ds.PhotometricInterpretation = photometric
    if frames > 1 or sop_class != "1.2.840.10008.5.1.4.1.1.7":
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 100
        ds.BurnedInAnnotation = "NO"
    if frame_of_reference:  # the Frame of Reference module (Type U in the multi-frame SC IODs)
        ds.FrameOfReferenceUID = generate_uid(prefix="2.25.")
        ds.PositionReferenceIndicator = ""
    if photometric.startswith("MONOCHROME") and bits_stored > 8:
        ds.WindowCenter, ds.WindowWidth = 1 << (bits_stored - 1), 1 << bits_stored
    ds.save_as(out, enforce_file_format=True)
    return out


def _grey(rgb: np.ndarray, bits: int) -> np.ndarray:
    grey = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    if bits == 8:
        return np.rint(grey).astype(np.uint8)
    return np.rint(grey * ((1 << bits) - 1) / 255).astype(np.uint16)


def _palette(rgb: np.ndarray, ds_path: Path, patient_id: str) -> Path:
    """PALETTE COLOR from Pillow's adaptive palette of ``rgb``, 16-bit LUT entries."""
    image = Image.fromarray(rgb).quantize(colors=256)
    indices = np.asarray(image, dtype=np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint16)
    pal = np.asarray(image.getpalette()[:768], dtype=np.uint16).reshape(-1, 3)
    lut[:len(pal)] = pal * 257
    pydicom_image(indices, "PALETTE COLOR", 8, ds_path, patient_id=patient_id)
    ds = pydicom.dcmread(ds_path)
    for i, colour in enumerate(("Red", "Green", "Blue")):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", lut[:, i].tobytes())
    ds.save_as(ds_path, enforce_file_format=True)
    return ds_path


#: Names in the character sets of the corpus (each value representable in its set).
CHARSET_NAMES: dict[str, tuple[str | list[str], str]] = {
    "charset_iso_ir_100": ("ISO_IR 100", "Müller^Françoise"),
    "charset_iso_ir_192": ("ISO_IR 192", "Ωmega^Ζωή=山田^太郎"),
    "charset_iso_2022_ir_87": (["", "ISO 2022 IR 87"], JAPANESE_NAME),
    "charset_iso_2022_ir_149": (["", "ISO 2022 IR 149"], "Hong^Gildong=홍^길동"),
    "charset_gb18030": ("GB18030", "Wang^XiaoDong=王^小东"),
}

_SC = "1.2.840.10008.5.1.4.1.1.7"
_MF_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
_MF_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
_MF_COLOUR = "1.2.840.10008.5.1.4.1.1.7.4"
_SEVERAL_FRAMES = "3 frames: each field must be sent as an image of its own"


def highdicom_wsi(rgb: np.ndarray, out: Path, *, tile: int, patient_id: str,
                  transfer_syntax: str = JPEGBaseline8Bit, total: tuple[int, int] | None = None,
                  focal_planes: int = 1, optical_paths: int = 1) -> Path:
    """A VL Whole Slide Microscopy Image (one resolution level, ``TILED_FULL``) of ``rgb``
    made with highdicom's parts: its tiling (``tile_pixel_matrix``), frame encoder
    (``encode_frame``), pixel measures, plane orientation and specimen description (a
    Wright-stained blood smear). ``total`` makes a larger total pixel matrix of ``rgb``
    repeated; ``focal_planes`` and ``optical_paths`` repeat every tile for each."""
    import highdicom as hd
    from pydicom.encaps import encapsulate
    from pydicom.sr.codedict import codes

    rows, columns = total or rgb.shape[:2]
    reps = (-(-rows // rgb.shape[0]), -(-columns // rgb.shape[1]), 1)
    matrix = np.tile(rgb, reps)[:rows, :columns]
    frames: list[bytes] = []
    cache: dict[bytes, bytes] = {}
    for across, down in hd.utils.tile_pixel_matrix(rows, columns, tile, tile):
        block = np.zeros((tile, tile, 3), np.uint8)
        top, left = (down - 1) * tile, (across - 1) * tile
        part = matrix[top:top + tile, left:left + tile]
        block[:part.shape[0], :part.shape[1]] = part
        key = block.tobytes()
        if key not in cache:  # a large matrix of repeated content: encode each tile once
            cache[key] = hd.frame.encode_frame(
                block, transfer_syntax_uid=transfer_syntax, bits_allocated=8, bits_stored=8,
                photometric_interpretation="YBR_FULL_422" if transfer_syntax == JPEGBaseline8Bit
                else "RGB", planar_configuration=0)
        frames.append(cache[key])
    frames = frames * (focal_planes * optical_paths)
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber", "StudyTime", "AcquisitionDateTime"):
        setattr(ds, keyword, "")
    ds.StudyDate = ds.ContentDate = "20261203"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20261203101500"
    ds.Modality = "SM"
    ds.Manufacturer = "highdicom test scanner"
    ds.ManufacturerModelName = "corpus"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = hd.__version__
    ds.SeriesNumber = ds.InstanceNumber = 1
    _renew(ds, patient_id)
    ds.FrameOfReferenceUID = hd.UID()
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.DimensionOrganizationType = "TILED_FULL"
    dimension = Dataset()
    dimension.DimensionOrganizationUID = hd.UID()
    ds.DimensionOrganizationSequence = [dimension]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = columns * 0.00025, rows * 0.00025
    ds.ImagedVolumeDepth = 0.001
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, columns
    ds.TotalPixelMatrixFocalPlanes = focal_planes
    ds.NumberOfOpticalPaths = optical_paths
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]
    shared = Dataset()
    shared.PixelMeasuresSequence = hd.PixelMeasuresSequence([0.00025, 0.00025], 0.001)
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    paths = []
    for n in range(optical_paths):
        path = Dataset()
        path.OpticalPathIdentifier = str(n + 1)
        path.IlluminationColorCodeSequence = [hd.sr.CodedConcept("11744", "DCM", "Brightfield")]
        path.IlluminationTypeCodeSequence = [hd.sr.CodedConcept("111744", "DCM",
                                                                "Brightfield illumination")]
        path.ICCProfile = (Path(hd.__file__).parent / "_icc_profiles"
                           / "sRGB_v4_ICC_preference.icc").read_bytes()
        paths.append(path)
    ds.OpticalPathSequence = paths
    ds.ContainerIdentifier = f"SLIDE-{patient_id}"[:16]
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [hd.sr.CodedConcept("433466003", "SCT", "Microscope slide")]
    ds.AcquisitionContextSequence = []
    staining = hd.SpecimenPreparationStep(
        ds.ContainerIdentifier, hd.SpecimenStaining([codes.SCT.WrightStain]))
    ds.SpecimenDescriptionSequence = [hd.SpecimenDescription(
        ds.ContainerIdentifier, hd.UID(), specimen_preparation_steps=[staining],
        specimen_short_description="Peripheral blood smear")]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422" if transfer_syntax == JPEGBaseline8Bit \
        else "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = tile
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frames)
    if transfer_syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = 10.0
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.LossyImageCompression = "00"
        ds.PixelData = b"".join(frames)
    ds.save_as(out, enforce_file_format=True)
    return out


def build_corpus(rgb: np.ndarray, folder: Path) -> list[CorpusInput]:
    """Every kind of input of the corpus, made from the RGB field ``rgb`` (at most 256x256)
    in ``folder``: DCMTK's img2dcm, dcmcjpeg, dcmcjpls, dcmcrle and dcmconv, pydicom's
    encoders (photometric interpretations, bit depths, character sets, multi-frame SC),
    highdicom (whole-slide images)."""
    assert rgb.shape[0] <= 256 and rgb.shape[1] <= 256
    folder.mkdir(parents=True, exist_ok=True)
    out: list[CorpusInput] = []

    def add(kind: str, path: Path, expected: str = DIAGNOSTIC, reason: str = "") -> Path:
        out.append(CorpusInput(kind, path, expected, reason))
        return path

    # DCMTK img2dcm: SC without Modality, new SC (Multi-frame True Colour, one frame), VL
    # Photographic, from JPEG (encapsulated as sent) and from BMP (native RGB).
    sc_bmp = add("img2dcm_sc_bmp", img2dcm(rgb, folder, "img2dcm_sc_bmp", image_format="BMP"))
    add("img2dcm_sc_jpeg", img2dcm(rgb, folder, "img2dcm_sc_jpeg"))
    add("img2dcm_nsc_bmp", img2dcm(rgb, folder, "img2dcm_nsc_bmp", "-nsc", image_format="BMP"))
    add("img2dcm_nsc_jpeg", img2dcm(rgb, folder, "img2dcm_nsc_jpeg", "-nsc"))
    add("img2dcm_keep_appn", img2dcm(rgb, folder, "img2dcm_keep_appn", "--keep-appn"))
    add("img2dcm_vlp_jpeg", img2dcm(rgb, folder, "img2dcm_vlp_jpeg", "-vlp"))
    # A picture saved from OpenCV's BGR array as if it were RGB: its red cells are blue. The
    # model was confidently wrong on half such fields; the quality gate refuses them for their
    # colours ("unexpected_colours").
    add("img2dcm_red_blue_swapped",
        img2dcm(np.ascontiguousarray(rgb[..., ::-1]), folder, "img2dcm_red_blue_swapped",
                image_format="BMP"), NON_DIAGNOSTIC)
    # DCMTK codecs and transfer syntaxes, from the native SC.
    for kind, tool, options in (
            ("dcmcjpeg_baseline", "dcmcjpeg", ("+eb",)),
            ("dcmcjpeg_baseline_444", "dcmcjpeg", ("+eb", "+s4")),
            ("dcmcjpeg_lossless", "dcmcjpeg", ("+e1",)),
            ("dcmcjpls_lossless", "dcmcjpls", ("+el",)),
            ("dcmcjpls_near_lossless", "dcmcjpls", ("+en",)),
            ("dcmcrle", "dcmcrle", ()),
            ("dcmconv_implicit", "dcmconv", ("+ti",)),
            ("dcmconv_big_endian", "dcmconv", ("+tb",)),
            ("dcmconv_deflated", "dcmconv", ("+td",))):
        made = dcmtk(tool, sc_bmp, folder / f"{kind}.dcm", *options)
        ds = pydicom.dcmread(made)  # a new identity, so every input is an image of its own
        _renew(ds, kind.upper()[:16])
        ds.save_as(made)  # as read: the transfer syntax stays the tool's
        add(kind, made)
    # pydicom: colour spaces, the palette, grayscale of 8 and 16 bits.
    from pydicom.pixels import convert_color_space

    add("pydicom_ybr_full", pydicom_image(convert_color_space(rgb, "RGB", "YBR_FULL"),
                                          "YBR_FULL", 8, folder / "ybr_full.dcm",
                                          patient_id="YBR-FULL"))
    add("pydicom_rgb_native", pydicom_image(rgb, "RGB", 8, folder / "rgb.dcm",
                                            patient_id="RGB"))
    # RGB pixels labelled YBR_FULL (a writer's mistake): read as YBR, the plasma turns magenta;
    # the quality gate refuses it for its colours.
    add("pydicom_rgb_labelled_ybr_full", pydicom_image(rgb, "YBR_FULL", 8,
                                                       folder / "rgb_as_ybr.dcm",
                                                       patient_id="RGB-AS-YBR"),
        NON_DIAGNOSTIC)
    add("pydicom_palette", _palette(rgb, folder / "palette.dcm", "PALETTE"))
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for bits in (8, 12):  # 12 bits stored in 16 allocated
            grey = _grey(rgb, bits)
            if photometric == "MONOCHROME1":
                grey = (((1 << bits) - 1) - grey).astype(grey.dtype)
            kind = f"pydicom_{photometric.lower()}_{8 if bits == 8 else 16}bit"
            add(kind, pydicom_image(grey, photometric, bits,
                                    folder / f"{kind}.dcm", patient_id=kind[8:24].upper()),
                NON_DIAGNOSTIC)
    # Character sets, ISO 2022 forms with the usual empty first value included.
    for kind, (charset, name) in CHARSET_NAMES.items():
        add(kind, pydicom_image(rgb, "RGB", 8, folder / f"{kind}.dcm", patient_id=kind[8:24],
                                charset=charset, patient_name=name))
    # What other writers get wrong or write rarely, found by a walk from outside: each got "could
    # not be analysed" (the SEG builder failed on it), or no answer at all (the character set).
    for kind, path in _rarely_written(rgb, folder).items():
        add(kind, path)
    # Multi-frame SC: True Colour, Grayscale Byte, Grayscale Word, with one frame or several.
    for kind, sop_class, photometric, bits, arr, expected in (
            ("mf_true_colour", _MF_COLOUR, "RGB", 8, rgb, DIAGNOSTIC),
            ("mf_grayscale_byte", _MF_BYTE, "MONOCHROME2", 8, _grey(rgb, 8), NON_DIAGNOSTIC),
            ("mf_grayscale_word", _MF_WORD, "MONOCHROME2", 12, _grey(rgb, 12), NON_DIAGNOSTIC)):
        add(f"{kind}_1_frame", pydicom_image(arr, photometric, bits, folder / f"{kind}_1.dcm",
                                             patient_id=f"{kind[3:]}-1"[:16],
                                             sop_class=sop_class), expected)
        add(f"{kind}_3_frames", pydicom_image(arr, photometric, bits, folder / f"{kind}_3.dcm",
                                              patient_id=f"{kind[3:]}-3"[:16],
                                              sop_class=sop_class, frames=3),
            REFUSED, _SEVERAL_FRAMES)
        # with a Frame of Reference: still no coordinate system the frames' SEG could use
        add(f"{kind}_3_frames_for", pydicom_image(
            arr, photometric, bits, folder / f"{kind}_3_for.dcm",
            patient_id=f"{kind[3:]}-3F"[:16], sop_class=sop_class, frames=3,
            frame_of_reference=True), REFUSED, _SEVERAL_FRAMES)
    # Whole-slide images made with highdicom's parts: small single-plane slides are analysed
    # (assembled), others refused with the reason.
    add("highdicom_wsi_jpeg", highdicom_wsi(rgb, folder / "wsi_jpeg.dcm", tile=96,
                                            patient_id="WSI-JPEG"))
    add("highdicom_wsi_native", highdicom_wsi(rgb, folder / "wsi_native.dcm", tile=128,
                                              patient_id="WSI-NATIVE",
                                              transfer_syntax=ExplicitVRLittleEndian))
    flat = np.full((64, 64, 3), (200, 160, 190), np.uint8)
    add("highdicom_wsi_too_large", highdicom_wsi(flat, folder / "wsi_large.dcm", tile=512,
                                                 patient_id="WSI-LARGE", total=(5000, 4000)),
        REFUSED, "whole-slide image 5000x4000 exceeds 4096x4096")
    add("highdicom_wsi_focal_planes", highdicom_wsi(flat, folder / "wsi_planes.dcm", tile=32,
                                                    patient_id="WSI-PLANES", focal_planes=3),
        REFUSED, "3 focal planes: only a slide of one is analysed")
    add("highdicom_wsi_optical_paths", highdicom_wsi(flat, folder / "wsi_paths.dcm", tile=32,
                                                     patient_id="WSI-PATHS", optical_paths=2),
        REFUSED, "2 optical paths: only a slide of one is analysed")
    return out
