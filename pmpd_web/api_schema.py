"""The OpenAPI schema's view of every endpoint: drf-spectacular's, plus the error answers every
endpoint can give (so a client, and schemathesis, meet no undocumented status code).

Errors are DRF's: ``{"detail": "..."}``, or for a bad parameter or body the messages per field
(``{"field": ["message"]}``), or a list of messages.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema

ERROR_BODY = {
    "oneOf": [
        {"type": "object", "additionalProperties": True},
        {"type": "array", "items": {"type": "string"}},
    ]
}
ERRORS = {
    "400": "Bad parameters or body: the message names the field",
    "401": "Not logged in (session or token)",
    "403": "Your role in this cohort does not allow this",
    "404": "No such object, or in a cohort you are no member of",
    # PMPD_API_USER_RATE per user, PMPD_API_TOKEN_FAILURE_RATE wrong tokens per address.
    "429": "Too many requests: wait the seconds of the Retry-After header",
}
BODY_ERRORS = {
    # The proxy refuses bodies over its limit (docker/nginx.conf); uploads refuse files over
    # PMPD_UPLOAD_MAX_BYTES.
    "413": "The body, or a file it declares, is larger than this server accepts",
    "415": "The body is not of a media type this endpoint reads",
    # A request that starts a job while the job queue is unreachable (the job row is kept and
    # published when the queue is back).
    "503": "The job queue is unreachable: the job is saved and starts when it is back",
}


class PMPDAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        errors = {**ERRORS, **(BODY_ERRORS if self.method in ("POST", "PUT", "PATCH") else {})}
        for code, description in errors.items():
            responses.setdefault(
                code,
                {
                    "description": description,
                    "content": {"application/json": {"schema": ERROR_BODY}},
                },
            )
        return responses
