"""People's names as DICOM writes them, as people read them, and as they search for them."""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, and_, or_

from bcd_node.db.models import Patient


def person_name(name: str) -> str:
    """"Gregory House" → "House^Gregory" (DICOM PN); a name with ^ is kept."""
    name = " ".join(name.replace("\\", " ").split())[:64] or "unknown"
    if "^" in name or " " not in name:
        return name
    given, family = name.rsplit(" ", 1)
    return f"{family}^{given}"


def display_name(name: str, *, upper_family: bool = False) -> str:
    """A DICOM PN as people read it: ``Family, Prefix Given Middle Suffix`` ("Ñúñez García,
    Prof. José Ángel III"), the family name in capitals with ``upper_family`` (the reports').
    A name of several component groups (alphabetic=ideographic=phonetic, PS3.5 6.2.1.2) is
    shown by its alphabetic group with the ideographic one in brackets ("Yamada, Tarou (山田,
    太郎)"), or by the first group it has. A name without ``^`` is shown as it is; one of
    separators only is empty."""
    groups = name.split("=")[:3]
    shown = [_group(group, upper_family) for group in groups[:2]]
    if len(shown) == 2 and shown[0] and shown[1]:
        return f"{shown[0]} ({shown[1]})"
    return next((text for text in (*shown, *(_group(g, upper_family) for g in groups[2:]))
                 if text), "")


def _group(group: str, upper_family: bool) -> str:
    """One component group of a PN (:func:`display_name`)."""
    if "^" not in group:
        return group.strip()
    family, given, middle, prefix, suffix = (part.strip() for part in
                                             (group.split("^") + [""] * 5)[:5])
    if upper_family:
        family = family.upper()
    first = " ".join(part for part in (prefix, given, middle) if part)
    text = f"{family}, {first}" if family and first else family or first
    return f"{text} {suffix}" if suffix and text else text or suffix


def _like(text: str) -> str:
    """``text`` inside a LIKE pattern, its wildcards and the escape character (a backslash)
    escaped."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def patient_matches(term: str) -> ColumnElement[bool]:
    """Whether a patient is the one a search ``term`` names, as a person types it: the patient
    ID containing it, or the name containing each of its words in any order and case ("Müller,
    Anna", "anna müller" and "MÜLLER" all find ``Müller^Anna``; "山田 太郎" finds
    ``Yamada^Tarou=山田^太郎``). The databases' ILIKE ignores case in ASCII only (SQLite), so
    each word is also tried in lower case, upper case and capitalised."""
    words = [word for word in re.split(r"[\s,^=]+", term) if word]

    def has(word: str) -> ColumnElement[bool]:
        variants = sorted({word, word.lower(), word.upper(), word.capitalize()})
        return or_(*(Patient.name.ilike(_like(v), escape="\\") for v in variants))

    by_id = Patient.patient_id.ilike(_like(term.strip()), escape="\\")
    return or_(by_id, and_(*(has(word) for word in words))) if words else by_id

