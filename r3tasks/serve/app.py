"""The HTTP face of a `QueryService`: FastAPI routes, bearer auth, body limit, and one-line JSON errors.

Every error is `{"error": "<one line>"}` with its status (400 bad body, 401 no token, 404 unknown
gallery, version or item, 413 body too large, 503 queue full with Retry-After), never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import r3tasks
from r3tasks.errors import FilterError, R3Error
from r3tasks.serve.galleries import NotFound
from r3tasks.serve.page import PAGE_HTML
from r3tasks.serve.service import QueryRequest, QueryService, QueueFull

log = logging.getLogger(__name__)

# Paths served without a token: the page holds no data, and asks for the token itself.
OPEN_PATHS = frozenset({"/"})


class ResultsJSON(JSONResponse):
    """JSON as the results file writes it (NaN kept), ASCII-escaped so any text, even a lone surrogate from a
    JSON escape, can be sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> ResultsJSON:
    return ResultsJSON({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    # A raw ASGI reply: the middlewares below answer before FastAPI and its exception handlers run.
    response = error_response(status, message, headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class BearerAuth:
    """401 for any request (but the page) without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):  # constant time: no guessing it byte by byte
                await _send_error(send, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `max_bytes`: at once from its Content-Length, else as soon as the stream passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body over {self.max_bytes} bytes (serve.max_body_bytes)"
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "malformed Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await _send_error(send, 413, too_large)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from reading the body, so its handler answers 413.
                    raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited, send)


def _validation_line(error: RequestValidationError) -> str:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse')} (at character {first['loc'][-1]})"
    if first["loc"] == ("body",) and first.get("type") == "missing":
        return "the request has no body: send a JSON object with `queries`"
    if first["loc"] == ("body",) and isinstance(first.get("input"), bytes | str):
        return "the body must be a JSON object sent with Content-Type: application/json"
    if first["loc"] == ("body",):
        return f"the body must be a JSON object, not {type(first.get('input')).__name__}"
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def create_app(service: QueryService) -> FastAPI:
    """The FastAPI app answering for `service`; `service.close()` runs when the app shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="r3 query service",
        version=r3tasks.__version__,
        description="Reasoning-guided video retrieval over one data home's galleries (docs/serving.md).",
        default_response_class=ResultsJSON,
        lifespan=lifespan,
    )
    serve = service.settings.serve
    app.add_middleware(BodyLimit, max_bytes=serve.max_body_bytes)
    if serve.token is not None:
        app.add_middleware(BearerAuth, token=serve.token.get_secret_value())  # added last: runs first

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, error: RequestValidationError) -> Response:
        return error_response(400, _validation_line(error))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, error: NotFound) -> Response:
        return error_response(404, str(error))

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, error: QueueFull) -> Response:
        return error_response(503, str(error), {"Retry-After": str(serve.retry_after_seconds)})

    @app.exception_handler(FilterError)
    async def _bad_filter(request: Request, error: FilterError) -> Response:
        return error_response(400, str(error))

    @app.exception_handler(R3Error)
    async def _r3_error(request: Request, error: R3Error) -> Response:
        return error_response(409, str(error))  # e.g. a gallery emptied since it was pinned

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    @app.post("/v1/query", summary="Answer a batch of composed and text queries")
    async def query(body: QueryRequest) -> Response:
        """Results in the batch results schema: `{"lineage": ..., "results": [...]}`."""
        future = service.submit(body)  # QueueFull: 503 before any work
        return ResultsJSON(await asyncio.wrap_future(future))

    @app.get("/v1/galleries", summary="The data home's galleries")
    def galleries() -> Response:
        return ResultsJSON(service.galleries())

    @app.get("/v1/items", summary="Stored items whose id or text holds `q`, a page at a time")
    def items(
        q: str = "",
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        gallery: str | None = None,
        gallery_version: str | None = None,
    ) -> Response:
        """`{"items": [{id, text, kind}], "total", "gallery"}`: ids holding `q` first (case-insensitive), then
        texts holding it, each by id; what the search page's source picker lists."""
        follower = service.follower(gallery)
        view = follower.at(gallery_version)
        needle = q.strip().casefold()
        found = [r for r in view.records.values() if needle in r.id.casefold() or needle in (r.text or "").casefold()]
        found.sort(key=lambda r: (needle not in r.id.casefold(), r.id))
        listed = [{"id": r.id, "text": r.text, "kind": "video" if r.path else "text"} for r in found[offset:][:limit]]
        ref = {"name": follower.name, "table": view.ref.table, "version": view.ref.version}
        return ResultsJSON({"items": listed, "total": len(found), "gallery": ref})

    @app.get(
        "/v1/items/{item_id:path}/thumbnail", summary="The middle frame of a video item (of its moment), as a JPEG"
    )
    def thumbnail(
        item_id: str,
        gallery: str | None = None,
        gallery_version: str | None = None,
        size: int = Query(160, ge=16, le=1024, description="Longest side in pixels"),
    ) -> Response:
        from PIL import Image

        from r3tasks.media.clips import moment_thumbnail

        follower = service.follower(gallery)
        record = follower.item(follower.at(gallery_version), item_id)
        if not record.path:
            raise NotFound(f"item {item_id!r} is text only: it has no video to show")
        try:
            frame = moment_thumbnail(record.path, record.start_s, record.end_s, max_side=size)
        except (R3Error, OSError) as error:
            raise NotFound(f"item {item_id!r}: no frame to show ({error})") from None
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg")

    @app.get("/v1/items/{item_id:path}", summary="One stored item: id, path, text, group, times")
    def item(item_id: str, gallery: str | None = None, gallery_version: str | None = None) -> Response:
        follower = service.follower(gallery)
        return ResultsJSON(follower.item_details(follower.at(gallery_version), item_id))

    @app.get("/healthz", summary="Gallery table and version, models loaded, queue")
    def healthz() -> Response:
        return ResultsJSON(service.health())

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    return app


__all__ = ["BearerAuth", "BodyLimit", "create_app", "error_response"]
