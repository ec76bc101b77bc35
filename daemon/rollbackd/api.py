"""The HTTP API (design §3): webhooks, deploys, state, approvals, health, metrics, status page,
and, beyond §3, the manual rollback that ``rollbackd rollback`` hands to a running daemon.

Every client mistake is a 4xx with a JSON body ``{"error": ..., "field": ...}``
naming what is wrong, never a 5xx. Tokens are compared as SHA-256 hashes in
constant time and never logged; request bodies are limited to
``[daemon] max_body_bytes`` (413). A webhook is journaled before its 2xx.
"""

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rollbackd import __version__
from rollbackd.config import ROLES
from rollbackd.core.durations import format_instant
from rollbackd.errors import Conflict, InvalidInput, NotFound, NotPermitted
from rollbackd.journal import IncidentRecord, IncidentState, JournalError
from rollbackd.output import incident_record
from rollbackd.report import render_report
from rollbackd.service import Caller, Daemon

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Incident id.")]
"""An incident id: SQLite's integer range, so no id can overflow the journal."""

PARSE_INLINE_BYTES = 64 * 1024
"""A webhook body up to this size is parsed on the event loop (quicker than a thread hop);
a larger one, up to 1,000 alerts, in a worker thread so that the loop keeps serving."""

ANY_ROLE = ROLES


class _TooLarge(Exception):  # noqa: N818 -- maps to HTTP 413
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class BodyLimit:
    """Refuse bodies over ``limit()`` bytes, by Content-Length or while they stream in.

    The limit is asked for at each request, so a reloaded ``max_body_bytes`` applies.
    """

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: Callable[[], int]
    ) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = _error(413, str(_TooLarge(limit)), "body")
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        await self.app(scope, limited, send)


def _error(status: int, error: str, field: str | None = None, **extra: Any) -> JSONResponse:
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


class MigrationBody(BaseModel):
    """One migration named by a deploy event."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(min_length=1, max_length=1000)
    backwards_compatible: bool | None = None
    changes_data: bool | None = None


class DeployBody(BaseModel):
    """A deploy event from CI (design §3)."""

    model_config = ConfigDict(extra="forbid")
    service: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=200)
    ref: str | None = Field(default=None, min_length=1, max_length=200)
    time: str | None = Field(default=None, max_length=64)
    migrations: list[MigrationBody] | None = Field(default=None, max_length=1000)


class RollbackBody(BaseModel):
    """A rollback asked for by a person; without ``to``, to the last known good version."""

    model_config = ConfigDict(extra="forbid")
    to: str | None = Field(default=None, min_length=1, max_length=200)
    reason: str | None = Field(default=None, min_length=1, max_length=1000)


_templates = Environment(
    loader=PackageLoader("rollbackd", "templates"), autoescape=select_autoescape(["html", "j2"])
)


def create_app(daemon: Daemon) -> FastAPI:  # noqa: PLR0915 -- the routes read as one table
    """The FastAPI application over one running daemon."""
    app = FastAPI(
        title="rollbackd",
        version=__version__,
        description="Watches a deployed application and rolls back a bad deploy.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=lambda: daemon.config.daemon.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors():
            loc = [str(p) for p in item.get("loc", ()) if p != "body"]
            if item.get("type") == "json_invalid":
                loc = []
            problems.append({"field": ".".join(loc) or "body", "error": item.get("msg", "")})
        first = problems[0] if problems else {"field": "body", "error": "invalid"}
        return _error(422, f"{first['field']}: {first['error']}", first["field"], problems=problems)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        problems = [{"field": p.location, "error": p.message} for p in exc.problems]
        first = exc.problems[0]
        return _error(
            422,
            f"{first.location}: {first.message}" if first.location else first.message,
            first.location or "body",
            problems=problems,
        )

    for error in STATUS:
        app.add_exception_handler(error, _mapped)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up, or was dropped for sending too slowly (httpserver): no one
        # reads this answer, and it is no error of the daemon's.
        return Response(status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def authenticate(request: Request) -> Caller | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", errors="replace")).hexdigest()
        found: Caller | None = None
        for configured in daemon.config.tokens:
            if hmac.compare_digest(digest, configured.sha256):
                found = Caller(configured.name, configured.role)
        return found

    def requires(*roles: str) -> Callable[[Request], Caller]:
        def check(request: Request) -> Caller:
            caller = authenticate(request)
            if caller is None:
                missing = not request.headers.get("authorization")
                raise _Unauthorized("a bearer token is required" if missing else "unknown token")
            if caller.role not in roles and caller.role != "admin":
                raise NotPermitted(
                    f"this needs the role {' or '.join(roles)}; the token {caller.name!r} has "
                    f"{caller.role}"
                )
            return caller

        return check

    webhook_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["version", "alerts"],
                        "properties": {
                            "version": {"type": "string", "enum": ["4"]},
                            "status": {"type": "string"},
                            "alerts": {"type": "array", "items": {"type": "object"}},
                        },
                    }
                }
            },
        }
    }

    may_post_alerts = requires("alertmanager")

    @app.post(
        "/webhooks/alertmanager",
        openapi_extra=webhook_doc,
        status_code=200,
        response_model=dict[str, Any],
    )
    async def alertmanager(request: Request) -> Response:
        """Alertmanager's webhook (payload version 4), journaled before this answers."""
        # The hot path: no dependency injection, no thread hop for a small body, and an
        # answer that needs no validation. It waits on the journal's group commit.
        may_post_alerts(request)
        body = await request.body()
        if len(body) <= PARSE_INLINE_BYTES:
            queued = daemon.submit_webhook(body)
        else:
            queued = await run_in_threadpool(daemon.submit_webhook, body)
        changed, duplicates = await asyncio.wrap_future(queued)
        return JSONResponse({"accepted": changed, "duplicates": duplicates})

    deploy_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": DeployBody.model_json_schema()}},
        }
    }

    @app.post("/api/v1/deploys", status_code=201, openapi_extra=deploy_doc)
    async def deploys(
        request: Request, caller: Annotated[Caller, Depends(requires("ci"))]
    ) -> dict[str, Any]:
        """A deploy event from CI: starts the attribution window and dates the baseline."""
        raw = await request.body()  # read after authentication, within the body limit
        try:
            body = DeployBody.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        deploy = await run_in_threadpool(daemon.accept_deploy, body.model_dump(exclude_none=True))
        return {
            "service": deploy.service,
            "version": deploy.version,
            "ref": deploy.target_ref,
            "time": format_instant(deploy.time),
            "migrations": len(deploy.migrations),
        }

    @app.get("/api/v1/services")
    def services(caller: Annotated[Caller, Depends(requires(*ANY_ROLE))]) -> list[dict[str, Any]]:
        """Every service: version, deploy time, last known good, state and findings."""
        return daemon.services_view()

    @app.get("/api/v1/incidents")
    def incidents(
        caller: Annotated[Caller, Depends(requires(*ANY_ROLE))], limit: int = 50
    ) -> list[dict[str, Any]]:
        """Incidents, newest first; a pending approval carries its deadline and approver."""
        listed = []
        for record in daemon.journal.incidents(limit=max(1, min(limit, 1000))):
            body = incident_record(record)
            if record.state is IncidentState.AWAITING_APPROVAL:
                full = daemon.journal.incident(record.id) or record
                body["deadline"] = _deadline_text(daemon, full)
                body["approver"] = next(
                    (d.approver for d in reversed(full.decisions) if d.approver), None
                )
            listed.append(body)
        return listed

    @app.get("/api/v1/incidents/{incident}")
    def incident(
        incident: IncidentId, caller: Annotated[Caller, Depends(requires(*ANY_ROLE))]
    ) -> dict[str, Any]:
        """One incident with its decisions and steps."""
        return _incident_detail(daemon, incident)

    @app.get("/api/v1/incidents/{incident}/report")
    def report(
        incident: IncidentId,
        caller: Annotated[Caller, Depends(requires(*ANY_ROLE))],
        format: str = "markdown",
    ) -> Response:
        """The incident report, as Markdown or HTML."""
        if format not in ("markdown", "html"):
            return _error(422, "format: expected markdown or html", "format")
        record = daemon.journal.incident(incident)
        if record is None:
            raise NotFound(f"no incident {incident}")
        text = render_report(record, "html" if format == "html" else "markdown")
        media = "text/html" if format == "html" else "text/markdown"
        return Response(text, media_type=f"{media}; charset=utf-8")

    @app.post("/api/v1/incidents/{incident}/approve")
    def approve(
        incident: IncidentId, caller: Annotated[Caller, Depends(requires(*ANY_ROLE))]
    ) -> dict[str, Any]:
        """Approve a pending rollback: it starts now. Needs the policy's approver role."""
        return incident_record(daemon.approve(incident, caller))

    @app.post("/api/v1/incidents/{incident}/veto")
    def veto(
        incident: IncidentId, caller: Annotated[Caller, Depends(requires(*ANY_ROLE))]
    ) -> dict[str, Any]:
        """Veto a pending rollback: it will not run. Needs the policy's approver role."""
        return incident_record(daemon.veto(incident, caller))

    rollback_doc = {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RollbackBody.model_json_schema()}},
        }
    }

    @app.post("/api/v1/services/{name}/rollback", status_code=202, openapi_extra=rollback_doc)
    async def rollback(
        name: str,
        request: Request,
        caller: Annotated[Caller, Depends(requires("admin", "senior_admin"))],
    ) -> dict[str, Any]:
        """Roll back a service now, by hand (the playbook's rollback authority: a system
        administrator or senior developer). 202 with the incident, which runs in the
        background like an approved rollback; 409 while a rollback of it is under way."""
        raw = await request.body()  # read after authentication, within the body limit
        try:
            body = RollbackBody.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        record = await run_in_threadpool(
            daemon.rollback_by_hand, name, body.to, body.reason, caller
        )
        return incident_record(record)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: config loaded, journal open; degraded sources are reported."""
        ready, body = daemon.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """The daemon's own Prometheus metrics."""
        return Response(daemon.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def status_page(request: Request) -> Response:
        """The status page: services, open incidents, pending approvals, recent rollbacks."""
        if not daemon.config.daemon.status_page_public:
            requires(*ANY_ROLE)(request)
        return HTMLResponse(render_status(daemon))

    return app


class _Unauthorized(Exception):  # noqa: N818 -- maps to HTTP 401
    """No bearer token, or one no configured token hashes to."""


STATUS: dict[type[Exception], tuple[int, str | None]] = {
    _Unauthorized: (401, "Authorization"),
    NotPermitted: (403, "Authorization"),
    NotFound: (404, None),
    Conflict: (409, None),
    _TooLarge: (413, "body"),
    JournalError: (503, None),
}
"""The one map from the errors the daemon raises to HTTP: (status, the field at fault).
InvalidInput and request validation are 422 with every problem named (handlers above)."""


async def _mapped(request: Request, exc: Exception) -> Response:
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
    return _error(status, message, field)


def _incident_detail(daemon: Daemon, incident: int) -> dict[str, Any]:
    record = daemon.journal.incident(incident)
    if record is None:
        raise NotFound(f"no incident {incident}")
    body = incident_record(record)
    body["decisions"] = [
        {
            "time": format_instant(d.time),
            "actor": d.actor,
            "action": d.action,
            "severity": d.severity,
            "rules": d.rules,
            "reason": d.reason,
            "approver": d.approver,
            "deadline": format_instant(d.deadline) if d.deadline else None,
            "guards": d.guards,
        }
        for d in record.decisions
    ]
    body["steps"] = [
        {
            "name": s.name,
            "started": format_instant(s.started_at),
            "finished": format_instant(s.finished_at) if s.finished_at else None,
            "outcome": s.outcome.value if s.outcome else None,
            "summary": s.summary,
        }
        for s in record.steps
    ]
    body["deadline"] = _deadline_text(daemon, record)
    return body


def _deadline_text(daemon: Daemon, record: IncidentRecord) -> str | None:
    deadline = daemon._deadline(record)
    return format_instant(deadline) if deadline else None


def render_status(daemon: Daemon) -> str:
    """The status page's HTML."""
    records = daemon.journal.incidents(limit=100)
    pending = [r for r in records if r.state is IncidentState.AWAITING_APPROVAL]
    # Open: not over yet, a rollback under way or waiting on people (escalated, vetoed...).
    open_incidents = [r for r in records if r.closed_at is None and r not in pending]
    rollbacks = [r for r in records if r.action == "rollback" and not r.state.active][:20]
    deadlines = {r.id: _deadline_text(daemon, daemon.journal.incident(r.id) or r) for r in pending}
    template = _templates.get_template("status.html.j2")
    return template.render(
        services=daemon.services_view(),
        pending=pending,
        deadlines=deadlines,
        open_incidents=open_incidents,
        rollbacks=rollbacks,
        status=daemon.status_line,
        now=format_instant(daemon.clock()),
        when=format_instant,
        version=__version__,
    )
