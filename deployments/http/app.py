"""The FastAPI app: the routers for `/api`, `/v1` and ingestion over one `ProductService`, behind the edge.

`create_app` only assembles: the edge (`edge.py`: request ids, the error map, body limits, stats) and
the gate in front of it (`gate.py`); the Serve ingress calls it on each replica, the fast test tier
in the test's process.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.errors import ModelError
from storage.errors import AtelierError

from .api import router as api_router
from .edge import (Edge, EdgeMiddleware, bug, client_closed, http_error, typed_error,
                   validation_error)
from .gate import Gate
from .ingest import router as ingest_router
from .console import router as console_router
from .limits import PlanGate
from .moderations import router as moderations_router
from .openai import router as openai_router

__all__ = ["create_app"]


def create_app(service, edge: Edge, *, serve_metrics: bool = False, echo_request_id: bool = False,
               served_by: dict[str, str] | None = None) -> FastAPI:
    """The whole HTTP surface over one service: `/api`, `/v1` and the ingest routes.

    `serve_metrics` exports per-route Serve metrics (inside a replica); `echo_request_id` sets
    `X-Request-ID` on answers, which Serve's proxy does itself in a cluster; `served_by` are headers
    every answer carries (the replica and the Ray node that answered, for operators and tests).
    """
    # No /docs or /redoc (their pages load scripts from a public CDN), and the schema needs a key
    # like every route but health (`GET /openapi.json` in api.py).
    app = FastAPI(
        title="atelier",
        version="0.1.0",
        description="Gallery search, prompt enhancement, FLUX generation and photo descriptions, served by Ray Serve.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.service = service
    app.state.edge = edge
    app.add_exception_handler(AtelierError, typed_error)
    app.add_exception_handler(ModelError, typed_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_closed)
    app.add_exception_handler(Exception, bug)
    app.include_router(api_router)
    app.include_router(openai_router)
    app.include_router(moderations_router)
    app.include_router(ingest_router)
    app.include_router(console_router)
    # Inside the edge (a refusal has a request id, an access line, stats), before any route reads a body.
    app.add_middleware(PlanGate, service=service)
    if serve_metrics and getattr(service, "limits", None) is not None:
        service.limits.on_event = _limit_metrics()  # refusals and counts made without Redis, gate and slots
        service.limits.on_charge = _charge_metrics()  # GPU seconds charged to plans
    if serve_metrics:
        _safety_metrics(service.ctx.guard)  # refusals of the content policy, checks made without the Guard
    app.add_middleware(EdgeMiddleware, service=service, edge=edge, serve_metrics=serve_metrics,
                       echo_request_id=echo_request_id, served_by=served_by)
    # Outermost: ids cleaned and keys checked before any route, dependency or body parser runs.
    app.add_middleware(Gate, keys=edge.keys, echo_request_id=echo_request_id)
    app.openapi = _as_answered(app.openapi)
    return app


def _limit_metrics():
    """`on_count(plan, limit, outcome)` for the plans' limits: refusals and counts made without Redis, by plan
    and limit (never by user). Only inside a Serve replica."""
    counter = []

    def on_count(plan, limit, outcome):
        if not counter:
            from ray.serve import metrics

            counter.append(metrics.Counter(
                "atelier_limit_events", tag_keys=("plan", "limit", "outcome"),
                description="Plan limit events: refused (a 429) and degraded (counted in one replica: Redis down)"))
        counter[0].inc(tags={"plan": plan or "unknown", "limit": limit or "unknown", "outcome": outcome})

    return on_count


def _charge_metrics():
    """`on_charge(plan, role, seconds)`: GPU seconds charged to users' budgets, by plan and role (never by user)."""
    counter = []

    def on_charge(plan, role, seconds):
        if not counter:
            from ray.serve import metrics

            counter.append(metrics.Counter(
                "atelier_plan_gpu_seconds", tag_keys=("plan", "role"),
                description="GPU seconds charged to plans' budgets by plan and role (the replicas' measured "
                            "compute times their GPU share)"))
        counter[0].inc(seconds, tags={"plan": plan or "unknown", "role": role})

    return on_charge


def _safety_metrics(guard) -> None:
    """The content policy's refusals by stage and category, and the checks made without the Guard (down, the
    policy failing open) by stage: never by user."""
    counters = {}

    def counter(name, tags, description):
        if name not in counters:
            from ray.serve import metrics

            counters[name] = metrics.Counter(name, tag_keys=tags, description=description)
        return counters[name]

    guard.on_refusal = lambda stage, category: counter(
        "atelier_safety_refusals", ("stage", "category"),
        "Prompts, texts and images the content policy refused, by stage and category").inc(
        tags={"stage": stage, "category": category})
    guard.on_degraded = lambda stage: counter(
        "atelier_safety_unguarded", ("stage",),
        "Checks let through without the Guard model (it was down and the policy fails open), by stage").inc(
        tags={"stage": stage})


_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
                       "type": {"type": "string", "description": "under /v1 only: OpenAI's error type"},
                       "param": {"type": ["string", "null"], "description": "under /v1 only: the field, or null"}}}},
}


def _as_answered(generate):
    """FastAPI's schema with the statuses the edge answers: a request that does not match a route's
    schema is a `400` in the error shape (`edge.validation_error`), never FastAPI's `422`."""

    def openapi() -> dict:
        schema = generate()  # FastAPI caches it: mutated once, in place
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "Error" not in components:
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components["Error"] = _ERROR_SCHEMA
            for methods in schema.get("paths", {}).values():
                for op in methods.values():
                    if op.get("responses", {}).pop("422", None) is not None:
                        op["responses"]["400"] = {
                            "description": "A missing, mistyped, unknown or out-of-range value, or a body that is not JSON",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return schema

    return openapi


