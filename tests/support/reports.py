"""What the report tests fill a field's report with (``tests/report/``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

#: Every optional row of a field's report, each as long as it gets: the report that takes the
#: most room.
FULL_ROWS: dict[str, Any] = {
    "review_reasons": ("low confidence", "scale unknown", "unlike the training data"),
    "institution": "Hôpital Saint-Louis, Laboratoire d'hématologie",
    "quality_notes": "slightly blurred", "accession_number": "A-2026-0001",
    "specimen_id": "S-77", "stain": "Wright-Giemsa", "age": "45 years", "sex": "F",
    "scale": "0.25 µm per pixel (not stated: the configured default (scale unknown))"}
#: A doctor's verification of a field's report.
VERIFIED: dict[str, Any] = {
    "verified_by": "Doe^Jane", "verified_organization": "Haematology",
    "verified_at": dt.datetime(2026, 12, 3, 13, 0), "verified_stage": "Benign",
    "verified_comment": "Morphology consistent with reactive lymphocytes."}
