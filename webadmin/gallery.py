"""The cell gallery of a field: its blast cells as JSON, and a doctor's "not a blast".

The page that shows a field includes ``worklist/_gallery.html``; ``static/gallery.js`` reads
:func:`cells` and draws each cell's crop from the field's image, and posts rejections here.
The rules (who, until when, the audit) are :mod:`bcd_node.records.cells`'.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify
from flask_login import current_user

from bcd_node.db.models import Result, ResultScope, Role, Study
from bcd_node.errors import ValidationError
from bcd_node.records.cases import load_case
from bcd_node.records.cells import (
    CellRefused,
    area_without,
    cells_final,
    corrected_blast_count,
    reject_cell,
    rejected_indices,
    restore_cell,
    result_cells,
)
from webadmin.db import actor, client_ip, db, node
from webadmin.helpers import fmt_pct

bp = Blueprint("gallery", __name__)


def _field_result(result_id: int) -> Result:
    result = db().get(Result, result_id)
    if result is None or result.scope != ResultScope.INSTANCE:
        abort(404)
    return result


def _case_figures(result: Result) -> tuple[int, float | None]:
    """The case's blast count and area as the case page shows them (:func:`load_case`)."""
    settings = node().settings
    study = db().get(Study, result.study_fk)
    if study is None:
        abort(404)
    case = load_case(db(), study, quiet_seconds=settings.workers.study_quiet_seconds,
                     review_threshold=settings.model.review_threshold)
    return case.blast_count, case.blast_area


def cells_payload(result: Result) -> dict[str, Any]:
    """What the gallery shows of a field's result: its cells, which are rejected, the counts."""
    session = db()
    listed = result_cells(result)
    rejected = rejected_indices(session, result.id)
    case_count, case_area = _case_figures(result)
    return {
        "result_id": result.id,
        "study_id": result.study_fk,
        "editable": (cells_final(session, result) is None
                     and current_user.role == Role.DOCTOR),
        "area_unit": "µm²" if listed.spacing_mm else "px",
        "shape": list(listed.shape) if listed.shape else None,
        "ai_count": result.blast_count,
        "field_count": corrected_blast_count(session, result),
        # The areas follow the rejected cells as the counts do; as the page writes them.
        "field_area": fmt_pct(area_without(result, rejected)),
        "case_count": case_count,
        "case_area": None if case_area is None else fmt_pct(case_area),
        "cells": [{**cell.as_dict(), "rejected": cell.index in rejected}
                  for cell in listed.cells],
    }


@bp.get("/results/<int:result_id>/cells")
def cells(result_id: int) -> Any:
    """A field's cells (JSON): box, area, score, rejected; and the field's and case's counts."""
    return jsonify(cells_payload(_field_result(result_id)))


@bp.post("/results/<int:result_id>/cells/<int:index>/<any(reject, restore):act>")
def change(result_id: int, index: int, act: str) -> Any:
    """Reject a cell ("not a blast"), or take the rejection back; answers the new counts."""
    if current_user.role != Role.DOCTOR:
        abort(403)
    session = db()
    result = _field_result(result_id)
    name, kind = actor()
    try:
        if act == "reject":
            reject_cell(session, result, index, user_id=current_user.user_id, actor=name,
                        actor_kind=kind, source=client_ip())
        else:
            restore_cell(session, result, index, actor=name, actor_kind=kind,
                         source=client_ip())
    except CellRefused as exc:
        session.rollback()
        return jsonify(error="refused", message=str(exc)), 409
    except ValidationError as exc:
        session.rollback()
        return jsonify(error="not found", message=str(exc)), 404
    session.commit()
    return jsonify(cells_payload(result))
