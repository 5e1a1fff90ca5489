"""The ASGI side of /v1: a lean Django handler and the dispatcher that puts it in front of the site.

Django's stock ASGI handler runs the site's middleware, makes a thread-sensitive context per request
and hops to a thread twice per request (request_started receivers, response.close()). /v1 needs none
of that: its views are async, do database work on gateway.db's own threads, and own their errors, so
this handler runs them straight on the event loop. It also caps request bodies before reading them,
notices a client that goes away (the view is cancelled, so the upstream call is cancelled), and runs
the request's finalizers (billing) once the response is out or the client is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import IO, cast

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import Http404, HttpResponse, HttpResponseBase
from django.template.response import SimpleTemplateResponse
from django.urls import Resolver404, resolve
from django.urls.resolvers import RoutePattern

from billing.refusals import flush_refusals
from gateway import metrics
from gateway.core.api_request import ApiRequest
from gateway.core.refusals import note_refused, note_refused_before_request
from gateway.core.streaming import EventStreamResponse, send_event_stream
from gateway.errors import ApiError, error_response
from gateway.providers.http import close_upstream_session
from gateway.surfaces.anthropic import errors as anthropic_errors
from gateway.surfaces.anthropic.urls import PREFIX as ANTHROPIC_PREFIX
from gateway.surfaces.anthropic.urls import api_patterns as anthropic_patterns
from gateway.surfaces.openai.urls import api_patterns
from writingmate.logs import bind_request_id, log_access, unbind_request_id
from writingmate.redis_connection import close_async_redis

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/openai/v1/", "/v1/", ANTHROPIC_PREFIX)
# Each surface's fixed routes, by prefix: /v1 (OpenAI's API) twice, Anthropic's Messages API once.
_SURFACE_PATTERNS = {"/api/openai/v1/": api_patterns, "/v1/": api_patterns, ANTHROPIC_PREFIX: anthropic_patterns}
_BODY_SPOOL_BYTES = 1024 * 1024


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/api/openai/v1", "/v1") or _is_anthropic_path(path)


def _is_anthropic_path(path: str) -> bool:
    # The whole /api/anthropic tree, so Claude Code's probe of its base URL gets an Anthropic-shaped 404.
    return path == "/api/anthropic" or path.startswith("/api/anthropic/")


def render_error(path: str, error: ApiError, *, request_id: str) -> HttpResponseBase:
    """`error` in the shape of the surface `path` belongs to: Anthropic's under /api/anthropic/, else OpenAI's."""
    if _is_anthropic_path(path):
        return anthropic_errors.error_response(error, request_id=request_id)
    return error_response(error, extra_headers={"x-request-id": request_id})


_request_id_key: bytes
_request_numbers: itertools.count[int]


def _new_request_id_source() -> None:
    global _request_id_key, _request_numbers
    _request_id_key, _request_numbers = os.urandom(32), itertools.count()


_new_request_id_source()
# A forked worker (gunicorn's preload) must not repeat its parent's ids: the ledger keys lines by them.
os.register_at_fork(after_in_child=_new_request_id_source)


def new_request_id() -> str:
    """`req_` + 32 hex digits: a keyed hash of this process's request counter, so unique and unguessable.

    Not os.urandom per request: getrandom releases the GIL, and taking it back can wait for a database
    thread's whole time slice (it showed as 4 % of a stream's CPU samples under load).
    """
    number = next(_request_numbers).to_bytes(8, "little")
    return "req_" + hashlib.blake2b(number, key=_request_id_key, digest_size=16).hexdigest()


class _BodyTooLarge(Exception):
    pass


class ApiHandler(ASGIHandler):
    request_class = ApiRequest

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Callable] = []
        self._template_response_middleware: list[Callable] = []
        self._exception_middleware: list[Callable] = []
        self._middleware_chain = self._respond
        self._exact_routes: dict[str, Callable] | None = None
        self.in_flight = 0

    def _exact_route(self, path: str) -> Callable | None:
        """The view for a fixed /v1 path: a dict lookup instead of walking the URL resolver."""
        if self._exact_routes is None:
            self._exact_routes = {
                prefix + str(pattern.pattern): pattern.callback
                for prefix, patterns in _SURFACE_PATTERNS.items()
                for pattern in patterns
                if isinstance(pattern.pattern, RoutePattern) and not pattern.pattern.converters
            }
        return self._exact_routes.get(path)

    async def _respond(self, request: ApiRequest) -> HttpResponseBase:
        try:
            view, kwargs = self._exact_route(request.path_info), {}
            if view is None:
                match = resolve(request.path_info, urlconf=settings.ROOT_URLCONF)
                request.resolver_match = match
                view, kwargs = match.func, match.kwargs
            response = await view(request, **kwargs)
            if isinstance(response, SimpleTemplateResponse):
                response.render()  # a DRF Response: JSON, rendered here rather than on a thread
            return response
        except (Http404, Resolver404):
            unknown = ApiError(f"Unknown request URL: {request.method} {request.path}.", status=404, code="unknown_url")
            note_refused(request, unknown)
            return render_error(request.path, unknown, request_id=request.request_id)
        except Exception:
            logger.exception("unhandled error on %s %s (%s)", request.method, request.path, request.request_id)
            failed = ApiError(
                f"The server had an error while processing your request. Request id: {request.request_id}.",
                status=500,
                error_type="server_error",
            )
            return render_error(request.path, failed, request_id=request.request_id)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.handle(scope, receive, send)

    async def send_response(self, response: HttpResponseBase, send: Callable) -> None:
        """Django's, without its per-chunk wrappers: /v1 bodies are bytes already and set no cookies."""
        if response.cookies or (response.streaming and not isinstance(response, EventStreamResponse)):
            await super().send_response(response, send)
            return
        headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        if not isinstance(response, EventStreamResponse):
            assert isinstance(response, HttpResponse)  # streaming responses of other kinds went to Django's
            await send({"type": "http.response.body", "body": response.content})
            return
        events = response.events
        try:
            await send_event_stream(events, send, heartbeat=response.heartbeat, opening=response.opening)
        finally:
            await events.aclose()
        await send({"type": "http.response.body"})

    async def run_get_response(self, request: ApiRequest) -> HttpResponseBase:  # type: ignore[override]
        # Django's version logs every 4xx through a thread; /v1 logs its own errors.
        return await self._middleware_chain(request)

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        request_id = new_request_id()
        token = bind_request_id(request_id)
        self.in_flight += 1  # until its billing is done too, not just its response
        try:
            await self._handle(scope, receive, send, request_id)
        finally:
            self.in_flight -= 1
            unbind_request_id(token)

    async def _handle(self, scope: dict, receive: Callable, send: Callable, request_id: str) -> None:
        started = time.monotonic()
        if sum(len(name) + len(value) for name, value in scope.get("headers", ())) > settings.API_MAX_HEADER_BYTES:
            too_large = ApiError(
                f"Request headers too large: the limit is {settings.API_MAX_HEADER_BYTES} bytes.",
                status=431,
                code="request_headers_too_large",
            )
            note_refused_before_request(scope, too_large)
            await self.send_response(render_error(scope["path"], too_large, request_id=request_id), send)
            log_access(scope, status=too_large.status, duration_seconds=time.monotonic() - started)
            return
        if scope["path"].endswith("/audio/transcriptions"):
            limit = settings.API_MAX_AUDIO_BYTES + 1024 * 1024
        elif _is_anthropic_path(scope["path"]):
            limit = settings.API_MAX_MESSAGES_BODY_BYTES
        else:
            limit = settings.API_MAX_JSON_BODY_BYTES
        try:
            body_file, body_size = await self._read_body(scope, receive, limit)
        except RequestAborted:
            return
        except _BodyTooLarge:
            too_large = ApiError(
                f"Request body too large: the limit is {limit} bytes.", status=413, code="request_too_large"
            )
            note_refused_before_request(scope, too_large)
            await self.send_response(render_error(scope["path"], too_large, request_id=request_id), send)
            log_access(scope, status=too_large.status, duration_seconds=time.monotonic() - started)
            return
        created, _ = self.create_request(scope, body_file)
        if created is None:
            body_file.close()
            await self.send_response(render_error(scope["path"], invalid_http_request(), request_id=request_id), send)
            log_access(scope, status=400, duration_seconds=time.monotonic() - started)
            return
        request = cast(ApiRequest, created)  # request_class
        # The whole body is read (within its cap): its real length lets DRF's parsers read a chunked one.
        request.META["CONTENT_LENGTH"] = str(body_size)
        request.request_id = request_id
        request.api_finalizers = []
        request.api_endpoint = "unknown"
        request.api_model = ""
        status = 499  # nginx's "client closed request", kept if the client leaves before the response
        responded = None

        async def process() -> None:
            nonlocal status, responded
            response = await self.run_get_response(request)
            response["x-request-id"] = request_id
            status = response.status_code
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass
            responded = time.monotonic()

        serving = asyncio.create_task(process())
        watching = asyncio.create_task(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait((serving, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, watching):
                if not task.done():
                    task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, RequestAborted):
                    pass
                except Exception:
                    logger.exception("error while serving %s (%s)", scope["path"], request_id)
            # The response is out (or the client left): the access line and metrics time exactly that.
            duration = (responded or time.monotonic()) - started
            log_access(scope, status=status, duration_seconds=duration)
            for finalizer in request.api_finalizers:
                try:
                    await asyncio.shield(finalizer())
                except Exception:
                    logger.exception("request finalizer failed (%s)", request_id)
            body_file.close()
            metrics.record_request(
                endpoint=request.api_endpoint,
                model=request.api_model,
                status=status,
                duration_seconds=duration,
            )

    async def _read_body(self, scope: dict, receive: Callable, limit: int) -> tuple[IO[bytes], int]:
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                declared = int(value)
                if declared > limit:
                    raise _BodyTooLarge
        # A body announced as small stays in memory; others may spill to disk past the spool size.
        small = declared is not None and declared <= _BODY_SPOOL_BYTES
        body_file = io.BytesIO() if small else tempfile.SpooledTemporaryFile(max_size=_BODY_SPOOL_BYTES, mode="w+b")
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                body_file.close()
                raise _BodyTooLarge
            if chunk:
                body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file, size


def invalid_http_request() -> ApiError:
    return ApiError("The request could not be parsed (bad encoding or headers).", status=400, code="invalid_request")


class ApiApplication:
    """Routes /v1 to ApiHandler and everything else to Django's own handler; owns the lifespan."""

    def __init__(self, *, site_application: Callable) -> None:
        self.site_application = site_application
        self.api_handler = ApiHandler()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            await self.api_handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._serve_site(scope, receive, send)
        else:
            await self.site_application(scope, receive, send)

    async def _serve_site(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = time.monotonic()
        status = 499  # no response: the client left first (Django stops on RequestAborted)

        async def send_noting_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.site_application(scope, receive, send_noting_status)
        except BaseException:
            if status == 499:
                status = 500  # uvicorn answers for an application that failed before responding
            raise
        finally:
            log_access(scope, status=status, duration_seconds=time.monotonic() - started)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await flush_refusals()  # the last seconds of refusals counted in this process
                await close_upstream_session()
                await close_async_redis()
                metrics.mark_process_dead()  # with PROMETHEUS_MULTIPROC_DIR, its open streams leave the sum
                await send({"type": "lifespan.shutdown.complete"})
                return
