"""Deterministic output UIDs."""

from __future__ import annotations

import pytest

from dicom import uids

SOURCE = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def test_same_arguments_same_uid():
    a = uids.derive_uid(SOURCE, "1.0.0", "seg")
    assert a == uids.derive_uid(SOURCE, "1.0.0", "seg")
    assert a.startswith("2.25.")
    assert len(a) <= 64
    uids.validate_uid(a)


@pytest.mark.parametrize(
    "other",
    [(SOURCE + "1", "1.0.0", "seg"), (SOURCE, "1.0.1", "seg"), (SOURCE, "1.0.0", "sr")],
)
def test_any_difference_gives_another_uid(other):
    assert uids.derive_uid(SOURCE, "1.0.0", "seg") != uids.derive_uid(*other)


def test_every_kind_is_distinct():
    derived = {uids.derive_uid(SOURCE, "1", kind) for kind in uids.OUTPUT_KINDS}
    assert len(derived) == len(uids.OUTPUT_KINDS)


@pytest.mark.parametrize(
    "root", ["1.2.3", "1.3.6.1.4.1.99999.42", "1.3.6.1.4.1.99999.1.2.3.4.5.6.7.8.9.10.11.12.13"]
)
def test_custom_root(root):
    uid = uids.derive_uid(SOURCE, "1.0.0", "sr", root=root)
    assert uid.startswith(root + ".")
    assert len(uid) <= 64
    uids.validate_uid(uid)
    assert uid == uids.derive_uid(SOURCE, "1.0.0", "sr", root=root + ".")


@pytest.mark.parametrize(
    "root",
    ["1.2.826.0.1.3680043.8.498", "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.10.511.3"],
)
def test_toolkit_prefixes_are_refused(root):
    with pytest.raises(ValueError, match="toolkit"):
        uids.derive_uid(SOURCE, "1", "seg", root=root)


@pytest.mark.parametrize("root", ["", "1..2", "01.2", "1.2a", "1." + "1" * 60, 2.25])
def test_bad_roots_are_refused(root):
    with pytest.raises((ValueError, TypeError)):
        uids.derive_uid(SOURCE, "1", "seg", root=root)


@pytest.mark.parametrize(
    ("source", "version", "kind"),
    [
        ("1.2.03", "1", "seg"),
        ("x", "1", "seg"),
        (SOURCE, "", "seg"),
        (SOURCE, "1", "SEG"),
        (SOURCE, "1", "a b"),
        (None, "1", "seg"),
    ],
)
def test_bad_arguments_are_refused(source, version, kind):
    with pytest.raises((ValueError, TypeError)):
        uids.derive_uid(source, version, kind)


def test_new_uid_is_random_and_valid():
    a, b = uids.new_uid(), uids.new_uid(root="1.2.3.4")
    assert a != uids.new_uid()
    assert a.startswith("2.25.") and b.startswith("1.2.3.4.")
    uids.validate_uid(a)
    uids.validate_uid(b)


def test_implementation_class_uid_is_ours():
    uids.validate_uid(uids.IMPLEMENTATION_CLASS_UID)
    assert not uids.IMPLEMENTATION_CLASS_UID.startswith(uids.FORBIDDEN_ROOTS)


def test_revision_zero_keeps_the_uids_derived_before_revisions():
    # A re-run of a job stored before revisions existed must make the objects already sent.
    for root in ("2.25", "1.3.6.1.4.1.99999.42"):
        assert uids.derive_uid(SOURCE, "1.0.0", "seg", root=root, revision=0) == \
            uids.derive_uid(SOURCE, "1.0.0", "seg", root=root)
    # The value derived before revisions existed (pinned so that it cannot drift).
    assert uids.derive_uid(SOURCE, "1.0.0", "seg") == "2.25.163491472649025308056001377831039885628"


def test_each_revision_gets_its_own_deterministic_uids():
    derived = [uids.derive_uid(SOURCE, "1.0.0", "sr", revision=r) for r in range(4)]
    assert len(set(derived)) == 4
    assert derived == [uids.derive_uid(SOURCE, "1.0.0", "sr", revision=r) for r in range(4)]
    custom = uids.derive_uid(SOURCE, "1.0.0", "sr", root="1.2.3", revision=1)
    assert custom != uids.derive_uid(SOURCE, "1.0.0", "sr", root="1.2.3")


@pytest.mark.parametrize("revision,error", [(-1, ValueError), (1.0, TypeError),
                                            (True, TypeError), ("1", TypeError)])
def test_bad_revisions_are_refused(revision, error):
    with pytest.raises(error, match="revision"):
        uids.derive_uid(SOURCE, "1", "seg", revision=revision)


def test_a_changed_field_gives_a_new_study_summary_kind():
    from pydicom.dataset import Dataset

    from dicom.summary import summary_kind

    fields = []
    for n in (1, 2):
        ds = Dataset()
        ds.SOPInstanceUID = f"2.25.{n}"
        fields.append(ds)
    kind = summary_kind(fields)
    assert summary_kind(fields, {"2.25.1": 0, "2.25.2": 0}) == kind  # as before revisions
    changed = summary_kind(fields, {"2.25.2": 1})
    assert changed != kind and changed == summary_kind(fields, {"2.25.2": 1})
    assert summary_kind(fields, {"2.25.2": 2}) not in (kind, changed)
