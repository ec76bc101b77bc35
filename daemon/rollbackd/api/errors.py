"""The one table from the daemon's errors to HTTP statuses, and the JSON error answer.

Every client mistake is a 4xx with a JSON body ``{"error": ..., "field": ...}``
naming what is wrong, never a 5xx; a journal that cannot be written is 503
(Alertmanager retries it). :func:`install` registers the handlers on an app.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rollbackd.errors import Conflict, InvalidInput, JournalError, NotFound, NotPermitted


class Unauthorized(Exception):  # noqa: N818 -- maps to HTTP 401
    """No bearer token, or one no configured token hashes to."""


class TooLarge(Exception):  # noqa: N818 -- maps to HTTP 413
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


STATUS: dict[type[Exception], tuple[int, str | None]] = {
    Unauthorized: (401, "Authorization"),
    NotPermitted: (403, "Authorization"),
    NotFound: (404, None),
    Conflict: (409, None),
    TooLarge: (413, "body"),
    JournalError: (503, None),
}
"""The one map from the errors the daemon raises to HTTP: (status, the field at fault).
InvalidInput and request validation are 422 with every problem named (:func:`install`)."""


def error_response(status: int, error: str, field: str | None = None, **extra: Any) -> JSONResponse:
    """The JSON error answer: what is wrong, and the field at fault when there is one."""
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(_encodable(body), status_code=status, headers=headers)


def _encodable(value: Any) -> Any:
    """``value`` with every text UTF-8 can hold: a lone surrogate a client sent, quoted in
    an error, is shown as ``\\ud800`` (the JSON answer must be UTF-8, never a 500)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


async def _mapped(request: Request, exc: Exception) -> Response:
    return mapped_response(exc)


def mapped_response(exc: Exception) -> Response:
    """The JSON error answer for ``exc``, by the first class of its MRO in :data:`STATUS`."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            status, field = STATUS[kind]
            break
    else:  # registered for the classes of STATUS only
        status, field = 500, None
    message = str(exc)
    if status == 503:
        message = f"the journal cannot be written, nothing was accepted: {exc}"
    return error_response(status, message, field)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 -- registered for it only
    problems = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        if item.get("type") == "json_invalid":
            loc = []
        problems.append({"field": ".".join(loc) or "body", "error": item.get("msg", "")})
    first = problems[0] if problems else {"field": "body", "error": "invalid"}
    return error_response(
        422, f"{first['field']}: {first['error']}", first["field"], problems=problems
    )


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)  # noqa: S101 -- registered for it only
    problems = [{"field": p.location, "error": p.message} for p in exc.problems]
    first = exc.problems[0]
    return error_response(
        422,
        f"{first.location}: {first.message}" if first.location else first.message,
        first.location or "body",
        problems=problems,
    )


async def _gone(request: Request, exc: Exception) -> Response:
    # The client hung up, or was dropped for sending too slowly (httpserver): no one
    # reads this answer, and it is no error of the daemon's.
    return Response(status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 -- registered for it only
    return error_response(exc.status_code, str(exc.detail))


def install(app: FastAPI) -> None:
    """Answer every error the daemon or the framework raises as :data:`STATUS` says."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(InvalidInput, _invalid_input)
    for error in STATUS:
        app.add_exception_handler(error, _mapped)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(StarletteHTTPException, _http_error)
