"""The mounts ``gated-billing serve`` adds to its routes: the member app, the staff console and
the JSON API, composed from their route modules on the shared foundation (``gated.web.foundation``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from gated.billing_sync.service import Billing
from gated.web import (
    api,
    api_self_service,
    desk,
    invoice_pdfs,
    join,
    member,
    my_data,
    openapi,
    pass_,
    plan_change,
    self_service,
)
from gated.web.foundation import Web
from gated.web.security import SecurityHeaders, stripe_csp

log = logging.getLogger(__name__)


async def client_gone(request: Request, exc: Exception) -> Response:
    """A browser that went away while its request body was being read (a double-clicked
    button cancels the first submit): nothing was done, nobody reads the answer; one log line,
    not a traceback."""
    log.info("event=client_gone method=%s path=%s", request.method, request.url.path)
    return Response(status_code=400)


def web_routes(billing: Billing, wake_mail: Callable[[], None] | None = None) -> list[BaseRoute]:
    """The member app under ``/app``, the staff console under ``/desk`` and the JSON API under
    ``/api/v1``, each behind the security headers; ``wake_mail`` is called when a sign-in mail is queued."""
    web = Web(billing, wake_mail or (lambda: None))
    stripe = billing.config.stripe
    # Only the member app takes cards (Stripe.js on its card pages).
    stripe_policy = (
        stripe_csp(stripe.js_url) if stripe and billing.config.gateway == "stripe" else None
    )
    mounts: list[BaseRoute] = []
    app_routes = [
        *pass_.page_routes(web),
        *join.routes(web),
        *self_service.routes(web),
        *invoice_pdfs.member_routes(web),
        *plan_change.routes(web),
        *my_data.routes(web),
        *member.routes(web),
    ]
    # The staff API's mount comes before the member API's, which would otherwise take its paths.
    roots = [
        ("/app", app_routes),
        *desk.roots(web),
        (
            "/api/v1",
            [
                openapi.route(lambda: [r for r in roots if r[0].startswith("/api/v1")]),
                *pass_.api_routes(web),
                *my_data.api_routes(web),
                *api_self_service.routes(web),
                *api.routes(web),
            ],
        ),
    ]
    for path, routes in roots:
        headers = Middleware(
            SecurityHeaders,
            https=web.https,
            static_prefix=f"{path}/static/",
            stripe_csp=stripe_policy if path == "/app" else None,
            camera=path == "/desk",
        )
        app = Starlette(
            routes=routes, middleware=[headers], exception_handlers={ClientDisconnect: client_gone}
        )
        app.state.web = web
        mounts.append(Mount(path, app=app))
    return mounts
