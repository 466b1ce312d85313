"""People's names as DICOM writes them."""

from __future__ import annotations


def person_name(name: str) -> str:
    """"Gregory House" → "House^Gregory" (DICOM PN); a name with ^ is kept."""
    name = " ".join(name.replace("\\", " ").split())[:64] or "unknown"
    if "^" in name or " " not in name:
        return name
    given, family = name.rsplit(" ", 1)
    return f"{family}^{given}"
