"""The v2 HTTP/REST front door, on aiohttp: routes, the binary tensor extension's header, bearer tokens."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import v2
from .service import V2Service

HEADER_LENGTH = "Inference-Header-Content-Length"
# Health is open to probes (a kubelet's, a load balancer's) even when a token is required.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), status=status, content_type="application/json")


def _error(error: v2.V2Error) -> web.Response:
    return _json({"error": error.message}, error.http_status)


def make_app(service: V2Service, token: str | None = None, max_body_bytes: int = 2**30) -> web.Application:
    """The aiohttp application: every v2 route, errors as ``{"error": message}`` with the protocol's status."""

    @web.middleware
    async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _json({"error": "unauthenticated: send 'Authorization: Bearer <token>'"}, 401)
        try:
            return await handler(request)
        except v2.V2Error as error:
            return _error(error)

    async def live(request: web.Request) -> web.Response:
        return web.Response(status=200 if await service.live() else 400)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if await service.ready() else 400)

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(v2.server_metadata(service.version))

    async def model_metadata(request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        return _json(v2.model_metadata(await service.model(name, version), version))

    async def model_ready(request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        model = await service.model(name, version)
        return web.Response(status=200 if (model.version_ready(version) if version else model.ready) else 400)

    async def model_config(request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        return _json(v2.model_config(await service.model(name, version)))

    async def statistics(request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json(await service.statistics(name, version))

    async def infer(request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        given = request.headers.get(HEADER_LENGTH)
        if given is not None and not given.isdigit():
            raise v2.bad_request(f"{HEADER_LENGTH} must be a whole number of bytes; got {given!r}")
        body = await request.read()
        document, binary = v2.parse_http_body(body, int(given) if given is not None else None)
        response = await service.infer(v2.request_from_json(name, version, document, binary))
        payload, header_length = v2.http_body(response)
        headers = {HEADER_LENGTH: str(header_length)} if header_length is not None else {}
        content_type = "application/octet-stream" if header_length is not None else "application/json"
        reply = web.Response(body=payload, headers=headers, content_type=content_type)
        accepted = request.headers.get("Accept-Encoding", "")
        if "gzip" in accepted or "deflate" in accepted:
            reply.enable_compression()
        return reply

    app = web.Application(middlewares=[errors_and_auth], client_max_size=max_body_bytes)
    model, versioned = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    app.add_routes(
        [
            web.get("/v2/health/live", live),
            web.get("/v2/health/ready", ready),
            web.get("/v2", server_metadata),
            web.get("/v2/models/stats", statistics),
            *(web.get(base, model_metadata) for base in (model, versioned)),
            *(web.get(f"{base}/ready", model_ready) for base in (model, versioned)),
            *(web.get(f"{base}/config", model_config) for base in (model, versioned)),
            *(web.get(f"{base}/stats", statistics) for base in (model, versioned)),
            *(web.post(f"{base}/infer", infer) for base in (model, versioned)),
        ]
    )
    return app
