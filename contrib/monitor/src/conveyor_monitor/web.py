"""The monitor's HTTP side (Starlette): the page, its JSON, the dead-letter
actions and ``/metrics``.

Guarding: with a token every request must carry it (``Authorization: Bearer …``, or
``?token=`` to open the page in a browser); the actions take only JSON posts, which a
page of another site cannot send without a CORS preflight that is never granted;
and on a loopback bind only loopback Host names are answered (no DNS rebinding).
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.concurrency import run_in_threadpool

from .sampler import Sampler
from .state import EventState

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class TokenMiddleware(BaseHTTPMiddleware):
    """Refuse every request that does not carry the token."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.token):
            return PlainTextResponse("a token is required: send 'Authorization: Bearer "
                                     "<token>' or open the page with ?token=<token>\n",
                                     status_code=401)
        return await call_next(request)


def _page() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def metrics_endpoint(registry: CollectorRegistry) -> Route:
    async def metrics(_request: Request) -> Response:
        data = await run_in_threadpool(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)
    return Route("/metrics", metrics)


def middleware(token: str | None, loopback: bool) -> list[Middleware]:
    stack = []
    if loopback:
        stack.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
    if token:
        stack.append(Middleware(TokenMiddleware, token=token))
    return stack


def make_app(sampler: Sampler, state: EventState, registry: CollectorRegistry, *,
             token: str | None, loopback: bool, app_name: str) -> Starlette:
    """The page's server: ``/``, ``/api/state``, ``/api/dead/requeue``,
    ``/api/dead/purge`` and ``/metrics``."""
    page = _page()

    async def index(_request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def api_state(_request: Request) -> Response:
        return JSONResponse({"app": app_name, **sampler.snapshot(), **state.snapshot()})

    async def _json(request: Request) -> dict[str, Any] | Response:
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return PlainTextResponse("send JSON (Content-Type: application/json)\n",
                                     status_code=415)
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("the body is not JSON\n", status_code=400)
        if not isinstance(body, dict):
            return PlainTextResponse("the body must be a JSON object\n", status_code=400)
        if not sampler.can_dead:
            return PlainTextResponse(f"the broker {sampler.broker} keeps no dead letters\n",
                                     status_code=409)
        return body

    async def requeue(request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, Response):
            return body
        ids = body.get("ids")
        if ids is not None and not (isinstance(ids, list)
                                    and all(isinstance(i, str) for i in ids)):
            return PlainTextResponse("'ids' must be a list of dead-letter ids, or "
                                     "absent for all\n", status_code=400)
        count = await run_in_threadpool(sampler.requeue, ids)
        return JSONResponse({"requeued": count})

    async def purge(request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, Response):
            return body
        queue = body.get("queue")
        if queue is not None and not isinstance(queue, str):
            return PlainTextResponse("'queue' must be a queue name\n", status_code=400)
        count = await run_in_threadpool(sampler.purge, queue)
        return JSONResponse({"purged": count})

    routes = [Route("/", index), Route("/api/state", api_state),
              Route("/api/dead/requeue", requeue, methods=["POST"]),
              Route("/api/dead/purge", purge, methods=["POST"]),
              metrics_endpoint(registry)]
    return Starlette(routes=routes, middleware=middleware(token, loopback))


def make_metrics_app(registry: CollectorRegistry, *, token: str | None,
                     loopback: bool) -> Starlette:
    """``--metrics-port``'s server: ``/metrics`` only."""
    return Starlette(routes=[metrics_endpoint(registry)],
                     middleware=middleware(token, loopback))
