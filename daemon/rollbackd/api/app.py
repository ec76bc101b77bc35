"""The HTTP API (design §3): webhooks, deploys, state, approvals, health, metrics, status page,
and, beyond §3, the manual rollback that ``rollbackd rollback`` hands to a running daemon.

Every client mistake is a 4xx with a JSON body ``{"error": ..., "field": ...}``
naming what is wrong, never a 5xx. Tokens are compared as SHA-256 hashes in
constant time and never logged; request bodies are limited to
``[daemon] max_body_bytes`` (413). A webhook is journaled before its 2xx.
"""

import asyncio
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from rollbackd import __version__
from rollbackd.api import errors
from rollbackd.api.auth import ANY_ROLE, Auth
from rollbackd.api.limits import BodyLimit
from rollbackd.api.webhooks import ROLES as WEBHOOK_ROLES
from rollbackd.api.webhooks import WebhookFastPath
from rollbackd.config import Config
from rollbackd.core.durations import format_instant
from rollbackd.errors import NotFound
from rollbackd.incidents import Caller, Incidents, deadline_of
from rollbackd.intake import Intake
from rollbackd.journal import IncidentRecord, IncidentState, Journal
from rollbackd.loop import Loop
from rollbackd.output import incident_record
from rollbackd.report import render_report
from rollbackd.state import State
from rollbackd.views import Views


class Served(Protocol):
    """What the API serves: a running daemon's parts (a :class:`~rollbackd.runtime.Served`)."""

    state: State
    loop: Loop
    incidents: Incidents
    intake: Intake
    views: Views

    @property
    def config(self) -> Config: ...

    @property
    def journal(self) -> Journal: ...


IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Incident id.")]
"""An incident id: SQLite's integer range, so no id can overflow the journal."""


class _Application(FastAPI):
    """FastAPI with Alertmanager's ordinary webhook answered ahead of it all
    (:class:`WebhookFastPath`), not among our middleware: the framework's own layers (its
    telemetry check, error pages, body limit: calls per request and per message sent)
    cost a tenth of a delivery's CPU, and the fast path hands every case they would act
    on to the framework."""

    ahead: ASGIApp
    """What answers each request first, handing the others to :meth:`framework`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.ahead(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own answer."""
        await super().__call__(scope, receive, send)


PARSE_INLINE_BYTES = 64 * 1024
"""A webhook body up to this size is parsed on the event loop (quicker than a thread hop);
a larger one, up to 1,000 alerts, in a worker thread so that the loop keeps serving."""


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


def create_app(runtime: Served) -> FastAPI:  # noqa: PLR0915 -- the routes read as one table
    """The FastAPI application over one running daemon's parts."""
    app = _Application(
        title="rollbackd",
        version=__version__,
        description="Watches a deployed application and rolls back a bad deploy.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=lambda: runtime.config.daemon.max_body_bytes)
    auth = Auth(lambda: runtime.config)
    app.ahead = WebhookFastPath(
        app.framework,
        auth=auth,
        submit=runtime.intake.submit_webhook,
        largest=PARSE_INLINE_BYTES,
        limit=lambda: runtime.config.daemon.max_body_bytes,
    )

    errors.install(app)
    requires = auth.requires

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

    may_post_alerts = requires(*WEBHOOK_ROLES)

    @app.post(
        "/webhooks/alertmanager",
        openapi_extra=webhook_doc,
        status_code=200,
        response_model=dict[str, Any],
    )
    async def alertmanager(request: Request) -> Response:
        """Alertmanager's webhook (payload version 4), journaled before this answers."""
        # The ordinary delivery is answered before it gets here (api.webhooks); this
        # route answers the others: errors, and large bodies (parsed in a thread).
        may_post_alerts(request)
        body = await request.body()
        if len(body) <= PARSE_INLINE_BYTES:
            queued = runtime.intake.submit_webhook(body)
        else:
            queued = await run_in_threadpool(runtime.intake.submit_webhook, body)
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
        deploy = await run_in_threadpool(
            runtime.intake.accept_deploy, body.model_dump(exclude_none=True)
        )
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
        return runtime.views.services()

    @app.get("/api/v1/incidents")
    def incidents(
        caller: Annotated[Caller, Depends(requires(*ANY_ROLE))], limit: int = 50
    ) -> list[dict[str, Any]]:
        """Incidents, newest first; a pending approval carries its deadline and approver."""
        listed = []
        for record in runtime.journal.incidents(limit=max(1, min(limit, 1000))):
            body = incident_record(record)
            if record.state is IncidentState.AWAITING_APPROVAL:
                full = runtime.journal.incident(record.id) or record
                body["deadline"] = _deadline_text(full)
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
        return _incident_detail(runtime, incident)

    @app.get("/api/v1/incidents/{incident}/report")
    def report(
        incident: IncidentId,
        caller: Annotated[Caller, Depends(requires(*ANY_ROLE))],
        format: str = "markdown",
    ) -> Response:
        """The incident report, as Markdown or HTML."""
        if format not in ("markdown", "html"):
            return errors.error_response(422, "format: expected markdown or html", "format")
        record = runtime.journal.incident(incident)
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
        return incident_record(runtime.incidents.approve(incident, caller))

    @app.post("/api/v1/incidents/{incident}/veto")
    def veto(
        incident: IncidentId, caller: Annotated[Caller, Depends(requires(*ANY_ROLE))]
    ) -> dict[str, Any]:
        """Veto a pending rollback: it will not run. Needs the policy's approver role."""
        return incident_record(runtime.incidents.veto(incident, caller))

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
            runtime.incidents.rollback_by_hand, name, body.to, body.reason, caller
        )
        return incident_record(record)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: config loaded, journal open; degraded sources are reported."""
        ready, body = runtime.views.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """The daemon's own Prometheus metrics."""
        return Response(runtime.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def status_page(request: Request) -> Response:
        """The status page: services, open incidents, pending approvals, recent rollbacks."""
        if not runtime.config.daemon.status_page_public:
            requires(*ANY_ROLE)(request)
        return HTMLResponse(render_status(runtime))

    return app


def _incident_detail(runtime: Served, incident: int) -> dict[str, Any]:
    record = runtime.journal.incident(incident)
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
    body["deadline"] = _deadline_text(record)
    return body


def _deadline_text(record: IncidentRecord) -> str | None:
    deadline = deadline_of(record)
    return format_instant(deadline) if deadline else None


def render_status(runtime: Served) -> str:
    """The status page's HTML."""
    records = runtime.journal.incidents(limit=100)
    pending = [r for r in records if r.state is IncidentState.AWAITING_APPROVAL]
    # Open: not over yet, a rollback under way or waiting on people (escalated, vetoed...).
    open_incidents = [r for r in records if r.closed_at is None and r not in pending]
    rollbacks = [r for r in records if r.action == "rollback" and not r.state.active][:20]
    deadlines = {r.id: _deadline_text(runtime.journal.incident(r.id) or r) for r in pending}
    template = _templates.get_template("status.html.j2")
    return template.render(
        services=runtime.views.services(),
        pending=pending,
        deadlines=deadlines,
        open_incidents=open_incidents,
        rollbacks=rollbacks,
        status=runtime.loop.status_line,
        cluster=runtime.state.leader.view() if runtime.state.clustered else None,
        now=format_instant(runtime.state.clock()),
        when=format_instant,
        version=__version__,
    )
