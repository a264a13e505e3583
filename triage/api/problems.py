"""What the API answers when it cannot answer the question: one body shape per kind.

* 401 / 403 / 404 / 503: ``{"message": ...}`` saying what to do;
* 422: ``{"message": ..., "errors": [{"field", "location", "message"}]}``, every message
  naming the field (query parameter or path segment) that cannot be used.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from triage.db.history import HistoryAccessDenied, InvalidHistoryFilter
from triage.db.query_audit import InvalidAuditRequest

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """Why the request was refused, and what to do."""

    message: str


class FieldProblem(BaseModel):
    field: str  # e.g. min_score
    location: str  # query | path
    message: str


class ValidationProblem(BaseModel):
    """A request parameter that cannot be used; ``message`` names the field(s)."""

    message: str
    errors: list[FieldProblem]


class FieldError(Exception):
    """Raised by a route for a parameter the library refused (answered with 422)."""

    def __init__(self, field: str, message: str, location: str = "query") -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.location = field, message, location


#: the error responses every protected route documents
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an unknown or revoked token"},
    422: {"model": ValidationProblem,
          "description": "a parameter that cannot be used; the message names the field"},
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "the token's role may not do this"},
}


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"message": message}, headers=headers)


def validation_problem(errors: list[FieldProblem]) -> JSONResponse:
    message = "; ".join(f"{e.field}: {e.message}" for e in errors)
    body = ValidationProblem(message=message, errors=errors)
    return JSONResponse(status_code=422, content=body.model_dump())


def _field_problems(exc: RequestValidationError) -> list[FieldProblem]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        location = loc[0] if loc else "request"
        field = loc[1] if len(loc) > 1 else location
        out.append(FieldProblem(field=field, location=location,
                                message=str(err.get("msg", "invalid value"))))
    return out


def install(app: FastAPI) -> None:
    """Answer validation errors and the library's filter errors in the shapes above."""

    async def request_invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(_field_problems(exc))

    async def field_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError | InvalidHistoryFilter | InvalidAuditRequest)
        location = exc.location if isinstance(exc, FieldError) else "query"
        return validation_problem([FieldProblem(field=exc.field, location=location,
                                                message=exc.message)])

    async def denied(_request: Request, exc: Exception) -> JSONResponse:
        return problem(403, str(exc))

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return problem(exc.status_code, str(exc.detail),
                       headers=dict(exc.headers) if exc.headers else None)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    for kind in (FieldError, InvalidHistoryFilter, InvalidAuditRequest):
        app.add_exception_handler(kind, field_error)
    app.add_exception_handler(HistoryAccessDenied, denied)
