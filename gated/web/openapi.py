"""``/api/v1/openapi.json``: the JSON API described from its own route table. Every route of the
API is an ``ApiRoute``, which carries its summary (and, where it takes them, its body fields
and query parameters) beside the handler, so the document cannot drift from the routes; a route
added as a plain ``Route`` is listed without a summary, and the tests fail on it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gated import __version__

# Field name → (JSON type, what it is), for a body or a query.
Fields = Mapping[str, tuple[str, str]]
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


class ApiRoute(Route):
    """A route of the JSON API with what ``openapi.json`` says of it: ``summary`` (one
    sentence), the JSON ``body`` fields a POST takes, the ``query`` parameters a GET reads, and
    ``auth``: "member" (the member's session cookie and, on a POST, its ``X-CSRF-Token``),
    "staff" (the same for a staff session) or "none"."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: Sequence[str],
        summary: str,
        body: Fields | None = None,
        query: Fields | None = None,
        auth: str = "member",
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        self.summary = summary
        self.body = dict(body or {})
        self.query = dict(query or {})
        self.auth = auth


def document(mounts: Sequence[tuple[str, Sequence[BaseRoute]]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route under the ``mounts`` (prefix, routes) given,
    leaving out routes marked ``include_in_schema=False`` (the API's catch-all 404)."""
    paths: dict[str, dict[str, Any]] = {}
    for prefix, routes in mounts:
        for route in routes:
            if not isinstance(route, Route) or not route.include_in_schema:
                continue
            path = prefix + _PARAM.sub(r"{\1}", route.path)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                paths.setdefault(path, {})[method.lower()] = _operation(route, method, path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gated member and staff API",
            "version": __version__,
            "description": "The member app's and the staff console's JSON twin. A member's "
            "routes take no member id: `me` is always the session's own member. Every POST "
            "needs the X-CSRF-Token header (from GET /api/v1/session, /api/v1/staff/session "
            "or, before signing up, GET /api/v1/join).",
        },
        "components": {
            "securitySchemes": {
                "member": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__Host-gated-member",
                    "description": "the member's session (gated-member on plain http)",
                },
                "staff": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__Host-gated-staff",
                    "description": "a staff session (gated-staff on plain http)",
                },
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token an owner issued (the staff API's GET routes)",
                },
            }
        },
        "paths": dict(sorted(paths.items())),
    }


def _operation(route: Route, method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{_slug(path.removeprefix('/api/v1'))}",
        "summary": route.summary if isinstance(route, ApiRoute) else None,
        "responses": {
            "200": {"description": "JSON"},
            "401": {"description": "no session"},
            "403": {"description": "missing or wrong X-CSRF-Token, or not allowed"},
        },
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(route.path)
    ]
    if isinstance(route, ApiRoute):
        params += [
            {"name": k, "in": "query", "schema": {"type": t}, "description": d}
            for k, (t, d) in route.query.items()
        ]
        if route.body:
            op["requestBody"] = {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                k: {"type": t, "description": d} for k, (t, d) in route.body.items()
                            },
                        }
                    }
                }
            }
        if route.auth == "none":
            op["security"] = []
        else:
            scheme: dict[str, list[str]] = {route.auth: []}
            if method != "GET":
                scheme["csrf"] = []
            op["security"] = [scheme]
            if route.auth == "staff" and method == "GET":
                op["security"].append({"token": []})
    if params:
        op["parameters"] = params
    return op


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"


def route(mounts: Callable[[], Sequence[tuple[str, Sequence[BaseRoute]]]]) -> ApiRoute:
    """``GET /openapi.json`` over the API mounts ``mounts()`` returns (read when asked, so it
    sees the whole table once it is built)."""

    async def openapi(request: Request) -> Response:
        return JSONResponse(document(mounts()))

    return ApiRoute(
        "/openapi.json",
        openapi,
        methods=["GET"],
        summary="This description of the API (OpenAPI 3.1).",
        auth="none",
    )
