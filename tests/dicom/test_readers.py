"""Every object the node builds, as other readers see it: highdicom, DCMTK dsrdump and dsr2html,
dciodvfy; code values of at most 16 characters and the node named on each (issue 14)."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom import codes
from dicom.algorithm import Algorithm
from dicom.encapsulated import build_encapsulated_pdf
from dicom.outputs import build_result_objects, write_dataset
from dicom.sr import Findings, Verification, build_sr
from dicom.summary import StudyFindings, build_study_summary_sr
from tests.support.dicomcheck import assert_dciodvfy_clean
from tests.support.tools import require_tool

PDF = b"%PDF-1.4\n%%EOF\n"
FINDINGS = Findings("Malignant-Pre", {"Benign": 0.02, "Malignant-Early": 0.08,
                                      "Malignant-Pre": 0.8, "Malignant-Pro": 0.1},
                    3, 0.045, True)
STUDY = StudyFindings("Malignant-Pre", FINDINGS.probabilities, fields_analysed=2,
                      fields_needing_review=1, fields_quality_insufficient=1, total_blasts=7,
                      blast_area_fraction=0.03)
INSTITUTION = "St. Example Hospital"


@pytest.fixture
def node_algorithm() -> Algorithm:
    """The algorithm as the node builds it, with `dicom.institution_name` set."""
    return Algorithm("bcd-vgg16-unet", "0.1.0-demo", software_version="0.1.0",
                     institution_name=INSTITUTION)


@pytest.fixture
def outputs(tmp_path, source_image, blast_mask, node_algorithm) -> dict[str, Path]:
    """Every kind of output, written: the field's SEG, SR and PDF, the verified SR and PDF,
    the study summary SR and PDF."""
    objects = build_result_objects(source_image, blast_mask, FINDINGS, algorithm=node_algorithm,
                                   pdf=PDF)
    paths = {name: write_dataset(ds, tmp_path / f"{name}.dcm") for name, ds in objects.by_kind()}
    when = dt.datetime(2026, 11, 24, 10, 30, 5, tzinfo=dt.timezone.utc)
    verification = Verification("House^Gregory", INSTITUTION, when, "Malignant-Pro", "Blasts.")
    seg = pydicom.dcmread(paths["seg"])
    verified = build_sr(source_image, seg, FINDINGS, algorithm=node_algorithm,
                        verification=verification, predecessor=pydicom.dcmread(paths["sr"]))
    paths["verified_sr"] = write_dataset(verified, tmp_path / "verified_sr.dcm")
    paths["verified_pdf"] = write_dataset(
        build_encapsulated_pdf(source_image, PDF, algorithm=node_algorithm, verified_at=when),
        tmp_path / "verified_pdf.dcm")
    second = source_image.copy()
    second.SOPInstanceUID = pydicom.uid.generate_uid(prefix="2.25.")
    summary = build_study_summary_sr([source_image, second], STUDY, algorithm=node_algorithm)
    paths["summary_sr"] = write_dataset(summary, tmp_path / "summary_sr.dcm")
    paths["summary_pdf"] = write_dataset(
        build_encapsulated_pdf(source_image, PDF, algorithm=node_algorithm,
                               uid_kind="study-summary-pdf"),
        tmp_path / "summary_pdf.dcm")
    assert set(paths) == {"seg", "sr", "pdf", "verified_sr", "verified_pdf", "summary_sr",
                          "summary_pdf"}
    return paths


def _codes(ds: Dataset) -> Iterator[Dataset]:
    """Every item of every sequence that holds a code (a Code Meaning with its value)."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                if "CodeMeaning" in item:
                    yield item
                yield from _codes(item)


def _run(tool: str, path: Path) -> str:
    proc = subprocess.run([require_tool(tool), os.fspath(path)], capture_output=True, text=True,
                          timeout=60, env=os.environ | {"TCP_NODELAY": "1"}, check=True)
    return proc.stdout


def _html_text(path: Path) -> str:
    """dsr2html's page as the text a reader sees, white space collapsed."""
    text = re.sub(r"<[^>]+>", " ", _run("dsr2html", path))
    return " ".join(html.unescape(text).split())


@pytest.mark.integration
def test_every_output_is_clean_and_names_the_node(outputs, node_algorithm):
    for name, path in outputs.items():
        assert_dciodvfy_clean(path)
        ds = pydicom.dcmread(path)
        assert ds.Manufacturer == "bcd-node", name
        assert ds.ManufacturerModelName == node_algorithm.model_name, name
        assert list(ds.SoftwareVersions) == ["0.1.0-demo", "0.1.0"], name
        assert ds.InstitutionName == INSTITUTION, name


@pytest.mark.integration
def test_every_code_value_is_at_most_16_characters(outputs):
    seen = set()
    for name, path in outputs.items():
        for item in _codes(pydicom.dcmread(path)):
            assert "LongCodeValue" not in item and "URNCodeValue" not in item, (name, item)
            value = str(item.CodeValue)
            assert 0 < len(value) <= codes.MAX_CODE_VALUE_LENGTH, (name, value)
            seen.add((value, str(item.CodingSchemeDesignator)))
    # the codes that were longer before issue 14 are among them, shortened
    assert {("BCD-STAGE-REV", "99BCD"), ("BLAST-AREA-FRAC", "99BCD"), ("BCD-CLASSIF", "99BCD"),
            ("BCD-STUDY-SUM", "99BCD"), ("FIELDS-REVIEW", "99BCD"),
            ("FIELDS-LOW-QUAL", "99BCD")} <= seen
    with pytest.raises(ValueError, match="16"):
        codes._private("A-PRIVATE-CODE-OF-17", "too long")


@pytest.mark.integration
def test_highdicom_reads_the_segment_reference_and_the_standard_codes(outputs):
    seg = hd.seg.segread(outputs["seg"])
    description = seg.get_segment_description(1)
    assert description.segmented_property_category.value == "49755003"  # CID 7150
    sr = hd.sr.srread(outputs["sr"])
    [blasts] = sr.content.get_volumetric_roi_measurement_groups()
    reference = blasts.referenced_segment
    assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert reference.referenced_segment_numbers == [1]
    for path in (outputs["sr"], outputs["verified_sr"], outputs["summary_sr"]):
        report = hd.sr.srread(path).content
        [group] = report.get_image_measurement_groups()
        assert [s.value for s in group.finding_sites] == [codes.BLOOD]
    summary = hd.sr.srread(outputs["summary_sr"]).content
    [group] = summary.get_image_measurement_groups()
    derivations = {m.name.value: m.derivation for m in group.get_measurements()}
    assert derivations["PROB-PRE"] == codes.MEAN
    assert derivations["BLAST-COUNT"] == codes.TOTAL
    assert derivations["FIELDS-ANALYSED"] == codes.TOTAL


@pytest.mark.integration
def test_dcmtk_prints_each_figure_with_its_name_and_unit(outputs):
    for name in ("sr", "verified_sr", "summary_sr"):
        dump = _run("dsrdump", outputs[name])
        assert "CONTINUOUS" not in dump, name
        assert re.search(r'NUM:\(,,"Probability of Benign"\)="2(\.0+)?" \(%,UCUM,"percent"\)',
                         dump), (name, dump)
        page = _html_text(outputs[name])
        assert re.search(r"Probability of Benign: 2(\.0+)? %", page), (name, page)
        assert re.search(r"Probability of Malignant-Pre: 80(\.0+)? %", page), (name, page)
        assert re.search(r"Blast cell count: \d+(\.0+)? \{cells\}", page), (name, page)
    page = _html_text(outputs["sr"])
    assert re.search(r"Blast cell area fraction: 4\.5 %", page), page
    summary = _html_text(outputs["summary_sr"])
    assert re.search(r"Fields analysed: 2(\.0+)? \{fields\}", summary), summary


@pytest.mark.integration
def test_the_corpus_checker_passes_our_outputs_and_finds_a_damaged_one(outputs, tmp_path):
    from tests.support.readback import read_back

    found = read_back(outputs.values())
    assert found.problems == []
    seg = pydicom.dcmread(outputs["seg"])
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    # the field's SEG, SR and PDF, and the verified SR
    assert sorted(found.sources[source]) == ["DOC", "SEG", "SR", "SR"]
    # an SR without its image measurement group, a SEG without a required attribute
    sr = pydicom.dcmread(outputs["sr"])
    del sr.ContentSequence[-1]
    del seg.SegmentSequence[0].SegmentAlgorithmType
    damaged = [tmp_path / "damaged_sr.dcm", tmp_path / "damaged_seg.dcm"]
    sr.save_as(damaged[0])
    seg.save_as(damaged[1])
    found = read_back(damaged)
    assert any("damaged_sr.dcm" in p for p in found.problems), found.problems
    assert any("damaged_seg.dcm: dciodvfy" in p for p in found.problems), found.problems
