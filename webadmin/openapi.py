"""The JSON API's OpenAPI 3 document, served at ``/api/v1/openapi.json``.

Written by hand next to the views in :mod:`webadmin.api` (no generator, no new dependency); a
test checks that its paths are exactly the API's routes, with their methods. The enumerations
come from the node's own enums, so they cannot drift from what the API returns.
"""

from __future__ import annotations

from typing import Any

from bcd_node.db.models import (
    DeliveryState,
    ResultScope,
    Stage,
    StudyStatus,
    VerificationState,
)

#: The API's base path; the paths below are under it.
BASE = "/api/v1"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # OpenAPI 3.1: a JSON Schema type list; a $ref goes under anyOf.
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "No, or a bad, token or credentials"),
    "429": _json(_ref("Error"), "Too many failed sign-ins from this address or for this name "
                 "(Retry-After says when to try again)"),
}
_NOT_FOUND = {"404": _json(_ref("Error"), "Nothing with this identifier")}


def _schemas() -> dict[str, Any]:
    stage = {"type": "string", "enum": [s.value for s in Stage]}
    number = {"type": "number"}
    by_state = {"type": "object", "description": "outbox rows by state",
                "properties": {s.value: {"type": "integer"} for s in DeliveryState}}
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "Status": {
            "type": "object",
            "properties": {
                "ae_title": {"type": "string"},
                "components": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {"available": {"type": "boolean"},
                                                     "detail": {"type": "string"}}}},
                "queue_depth": {"type": "integer", "description": "jobs queued or running"},
                "deliveries": by_state,
                "destinations": {
                    "type": "object", "description": "each destination (PACS or LIS) by name",
                    "additionalProperties": {"type": "object", "properties": {
                        "ok": {"type": "boolean",
                               "description": "nothing waits for it and its last C-ECHO (if "
                                              "any) succeeded"},
                        "waiting": {"type": "integer",
                                    "description": "its outbox rows not done, dead included"},
                        "deliveries": by_state,
                        "echo": {"type": "object", "properties": {
                            "ok": _nullable({"type": "boolean"}),
                            "at": _nullable({"type": "string", "format": "date-time"}),
                            "error": _nullable({"type": "string"})}}}}},
            },
        },
        "Study": {
            "type": "object",
            "properties": {
                "study_instance_uid": {"type": "string"},
                "patient_id": {"type": "string"},
                "patient_name": {"type": "string", "description": "DICOM PN (Family^Given)"},
                "study_date": {"type": "string", "description": "DICOM DA (YYYYMMDD) or empty"},
                "accession_number": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in StudyStatus]},
                "stage": _nullable(stage),
                "confidence": _nullable(number),
                "last_received_at": {"type": "string", "format": "date-time"},
            },
        },
        "StudyPage": {
            "type": "object",
            "properties": {"page": {"type": "integer"}, "pages": {"type": "integer"},
                           "total": {"type": "integer"},
                           "studies": {"type": "array", "items": _ref("Study")}},
        },
        "StudyWithResults": {
            "allOf": [_ref("Study"), {"type": "object", "properties": {
                "results": {"type": "array", "items": _ref("Result")}}}],
        },
        "Image": {
            "type": "object",
            "description": "The received image a field's result is about",
            "properties": {
                "sop_instance_uid": {"type": "string"},
                "field_number": {"type": "integer", "minimum": 1, "description":
                                 "the image's number in its study, in the order the node "
                                 "received them: the Instance Number of its results at the "
                                 "PACS"},
            },
        },
        "Verifier": {
            "type": "object",
            "properties": {"username": {"type": "string"},
                           "full_name": _nullable({"type": "string"})},
        },
        "Result": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "scope": {"type": "string", "enum": [s.value for s in ResultScope]},
                "model": {"type": "object", "properties": {"name": {"type": "string"},
                                                           "version": {"type": "string"}}},
                "image": _nullable(_ref("Image")) | {"description":
                                                      "null for a study's summary"},
                "stage": _nullable({**stage, "description":
                                    "the AI's stage; null when the quality was insufficient"}),
                "confidence": _nullable(number),
                "probabilities": {"type": "object", "additionalProperties": number},
                "blast_count": {"type": "integer", "description": "the AI's count"},
                "blast_area_fraction": number,
                "corrected_blast_count": _nullable({
                    "type": "integer", "description": "the count after the doctor's review "
                    "(cells rejected as not blasts); null for a study's summary"}),
                "quality": {"type": "object"},
                "needs_review": {"type": "boolean"},
                "verification": {"type": "string",
                                 "enum": [s.value for s in VerificationState]},
                "verified_stage": _nullable(stage),
                "verified_with_case": {
                    "type": "boolean",
                    "description": "a field verified with the signature of its case because "
                                   "the doctor rejected some of its cells: its cells were "
                                   "reviewed, its stage was not (verified_stage is null)"},
                "corrected": {"type": "boolean",
                              "description": "the doctor's stage differs from the AI's"},
                "verified_comment": _nullable({"type": "string"}),
                "verified_at": _nullable({"type": "string", "format": "date-time"}),
                "verified_by": _nullable(_ref("Verifier")),
                "amendment": _nullable({
                    "type": "object", "description": "a signed case amended: why, and the "
                    "signature it replaced (its time and stage)",
                    "properties": {
                        "reason": {"type": "string"},
                        "replaces_verified_at": {"type": "string", "format": "date-time"},
                        "replaces_verified_stage": _nullable(stage)}}),
                "pdf": {"type": "boolean"},
                "verified_pdf": {"type": "boolean"},
            },
        },
        "ResultWithStudy": {
            "allOf": [_ref("Result"), {"type": "object", "properties": {
                "study_instance_uid": {"type": "string"}}}],
        },
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/api/v1``."""
    uid = {"name": "uid", "in": "path", "required": True,
           "description": "Study Instance UID", "schema": {"type": "string"}}
    result_id = {"name": "result_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bcd-node API",
            "version": "1",
            "description": "Read access to the node's studies, results and status. Every "
                           "call needs an API token (Authorization: Bearer) that an admin "
                           "issues, or a user's basic credentials; every read of patient "
                           "data is audited. See docs/api.md.",
        },
        "servers": [{"url": BASE}],
        "security": [{"bearer": []}, {"basic": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token issued on the console's Users page"},
                "basic": {"type": "http", "scheme": "basic",
                          "description": "a console user's name and password"},
            },
            "schemas": _schemas(),
        },
        "paths": {
            "/status": {"get": {
                "operationId": "status", "summary": "The node's components, queue and "
                "deliveries (as bcd-node status)",
                "responses": {"200": _json(_ref("Status"), "The status"), **_ERRORS}}},
            "/studies": {"get": {
                "operationId": "listStudies",
                "summary": "Studies, newest first, with the worklist's filters",
                "parameters": [
                    _query("status", "a study status",
                           {"type": "string", "enum": [s.value for s in StudyStatus]}),
                    _query("stage", "a stage, or none",
                           {"type": "string", "enum": [*(s.value for s in Stage), "none"]}),
                    _query("from", "received on or after (YYYY-MM-DD)",
                           {"type": "string", "format": "date"}),
                    _query("to", "received on or before (YYYY-MM-DD)",
                           {"type": "string", "format": "date"}),
                    _query("patient", "a patient ID, or part of a name", {"type": "string"}),
                    _query("page", "page number, from 1", {"type": "integer", "minimum": 1}),
                    _query("per_page", "studies per page (1 to 500, default 100)",
                           {"type": "integer", "minimum": 1, "maximum": 500}),
                ],
                "responses": {"200": _json(_ref("StudyPage"), "One page of studies"),
                              **_ERRORS}}},
            "/studies/{uid}": {"get": {
                "operationId": "getStudy", "summary": "One study with its results",
                "parameters": [uid],
                "responses": {"200": _json(_ref("StudyWithResults"), "The study"),
                              **_ERRORS, **_NOT_FOUND}}},
            "/results/{result_id}": {"get": {
                "operationId": "getResult", "summary": "One result",
                "parameters": [result_id],
                "responses": {"200": _json(_ref("ResultWithStudy"), "The result"),
                              **_ERRORS, **_NOT_FOUND}}},
            "/results/{result_id}/pdf": {"get": {
                "operationId": "getResultPdf",
                "summary": "A result's PDF report: the verified one when it exists",
                "parameters": [result_id, _query("version", "ai: the AI's own report",
                                                 {"type": "string", "enum": ["ai"]})],
                "responses": {"200": {"description": "The PDF", "content": {
                    "application/pdf": {"schema": {"type": "string",
                                                   "contentMediaType": "application/pdf"}}}},
                              **_ERRORS, **_NOT_FOUND}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document"),
                              **_ERRORS}}},
        },
    }
