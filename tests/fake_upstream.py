"""A fake OpenAI-compatible upstream (shaped like OpenRouter) that tests and benchmarks run on loopback.

Importable without Django. In tests: `FakeUpstream().start()` (or the `fake_upstream` fixture in
tests/conftest.py). For benchmarks: `python -m tests.fake_upstream --port 9100 --latency-ms 0`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_PREFIX = "/api/v1"
DEFAULT_REPLY = "Hello from the fake upstream."
DEFAULT_WEB_RESULTS = (
    ("https://example.org/weather/paris", "Paris weather today"),
    ("https://news.example.com/storms", "Storm warnings"),
)
DEFAULT_TRANSCRIPT = "Hello from the fake transcription."
DEFAULT_USAGE: dict[str, Any] = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
ABSURD_USAGE: dict[str, Any] = {
    "prompt_tokens": 10**15,
    "completion_tokens": -7,
    "total_tokens": 10**15 - 7,
    "prompt_tokens_details": {"cached_tokens": 10**16},
    "completion_tokens_details": {"reasoning_tokens": -1},
}
DEFAULT_MESSAGES_USAGE: dict[str, Any] = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 3,
    "cache_read_input_tokens": 4,
    "output_tokens": 7,
}
DEFAULT_TOOL_ARGUMENTS = '{"location": "Paris", "unit": "celsius"}'
FAILURE_KINDS = frozenset(
    {
        "400",
        "401",
        "402",
        "403",
        "404",
        "429",
        "500",
        "502",
        "503",
        "timeout_before_headers",
        "stall_after_first_chunk",
        "malformed_sse",
        "malformed_error_sse",
        "drop_mid_stream",
        "error_mid_stream",
        "absurd_usage",
        "error_body_200",
    }
)
# Which POST endpoints a failure applies to unless `endpoint=` says otherwise.
GENERATING_ENDPOINTS = ("/chat/completions", "/completions", "/messages")

_ID = "@@ID@@"
_CREATED = '"@@CREATED@@"'
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PROCESSING_COMMENT = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid value for 'messages': the fake upstream was told to reject this.", "400"),
    401: ("authentication_error", "No auth credentials found", None),
    402: ("insufficient_credits", "Insufficient credits. Add more using https://openrouter.ai/credits", None),
    403: ("permission_error", "This model is not available in your region.", None),
    404: ("not_found_error", "No endpoints found for this model.", None),
    429: ("rate_limit_error", "Rate limit exceeded: the fake upstream was told to throttle this.", None),
    500: ("server_error", "Internal Server Error", None),
    502: ("server_error", "Provider returned error", None),
    503: ("server_error", "No available providers for this model", None),
}


def default_models() -> list[dict[str, Any]]:
    """OpenRouter's /models shape for the slugs the seeded catalogue routes to OpenRouter."""

    def model(slug: str, name: str, context_length: int, prompt: str, completion: str) -> dict[str, Any]:
        return {
            "id": slug,
            "canonical_slug": slug,
            "name": name,
            "created": 1754000000,
            "description": f"{name} (served by the fake upstream).",
            "context_length": context_length,
            "architecture": {
                "modality": "text->text",
                "input_modalities": ["text"],
                "output_modalities": ["text"],
                "tokenizer": "Other",
                "instruct_type": None,
            },
            "pricing": {
                "prompt": prompt,
                "completion": completion,
                "request": "0",
                "image": "0",
                "web_search": "0",
                "internal_reasoning": "0",
                "input_cache_read": "0",
            },
            "top_provider": {"context_length": context_length, "max_completion_tokens": 128000, "is_moderated": False},
            "per_request_limits": None,
            "supported_parameters": ["max_tokens", "temperature", "tools", "tool_choice", "stream_options"],
        }

    return [
        model("openai/gpt-5-mini", "OpenAI: GPT-5 Mini", 400000, "0.00000025", "0.000002"),
        model("openai/gpt-5", "OpenAI: GPT-5", 400000, "0.00000125", "0.00001"),
        model("anthropic/claude-sonnet-4.5", "Anthropic: Claude Sonnet 4.5", 1000000, "0.000003", "0.000015"),
        model("google/gemini-2.5-pro", "Google: Gemini 2.5 Pro", 1048576, "0.00000125", "0.00001"),
        model("google/gemini-2.5-flash", "Google: Gemini 2.5 Flash", 1048576, "0.0000003", "0.0000025"),
    ]


@dataclass
class RecordedRequest:
    """One request as the fake saw it. `cancelled` turns True if the client went away before the end."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] | None = None
    body: bytes = b""
    generation_id: str | None = None
    stream: bool = False
    failure: str | None = None
    completed: bool = False
    cancelled: bool = False
    chunks_sent: int = 0
    sent: bytes = b""  # the body the fake answered with (Messages API only), to check relays byte for byte


@dataclass
class _Failure:
    kind: str
    times: int
    endpoint: str | None


@dataclass(frozen=True)
class FakeReply:
    """What `FakeUpstream.respond_with` may answer a chat request with (None: the default behaviour)."""

    text: str | None = None
    tool: tuple[str, str] | None = None  # (function name, JSON arguments)
    usage: dict[str, Any] | None = None
    reasoning: str | None = None  # streamed as `reasoning` deltas before the answer, as OpenRouter does


@dataclass
class _Plan:
    """What one generating request will send back, decided before the first byte."""

    gen_id: str
    model: str
    kind: str  # "chat" | "completion"
    text: str | None
    tool: tuple[str, str] | None  # (function name, arguments)
    usage: dict[str, Any]
    include_usage: bool
    extra_frames: list[bytes] = field(default_factory=list)
    reasoning: str | None = None
    reasoning_details: str | None = None  # JSON of OpenRouter's reasoning_details, sent with the reasoning
    citations: str | None = None  # JSON of the url_citation annotations of a reply that searched the web


class FakeUpstream:
    """An aiohttp server on 127.0.0.1 in a background thread with its own event loop.

    Every knob is a plain attribute that tests may change between requests: `reply_text`, `usage`,
    `latency_ms`, `chunk_delay_ms`, `first_chunk_delay_ms`, `chunks`, `tool_arguments`, `send_processing_comment`,
    `always_send_usage`, `hang_seconds`, `models`, `generation_stats`, `transcript_text`,
    `transcription_usage`, `respond_with` (a function of the chat request body returning a
    `FakeReply` or None, for scripted conversations). `fail_next(kind)` queues a failure.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        record: bool = True,
        reply_text: str = DEFAULT_REPLY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # serve HTTPS (tests make the certificate)
        self.record = record
        self.reply_text = reply_text
        self.usage: dict[str, Any] = json.loads(json.dumps(DEFAULT_USAGE))
        self.latency_ms = latency_ms
        self.chunk_delay_ms: float = 0
        self.first_chunk_delay_ms: float = 0  # silence after a stream's headers, before its first chunk
        self.chunks = 5
        self.tool_arguments = DEFAULT_TOOL_ARGUMENTS
        self.send_processing_comment = False
        # OpenRouter sends usage at the end of every stream; OpenAI only when asked. Default: OpenAI's rule.
        self.always_send_usage = False
        self.hang_seconds: float = 30
        self.models: list[dict[str, Any]] = default_models()
        self.generation_stats: dict[str, dict[str, Any]] = {}
        self.transcript_text = DEFAULT_TRANSCRIPT
        self.transcription_usage: dict[str, Any] | None = None
        # GET /key (OpenRouter's "current API key"): every Bearer key is accepted with key_info's data
        # (OpenRouter's field names; `label` defaults to the key masked as OpenRouter does) except the
        # keys in rejected_keys, which get OpenRouter's 401.
        self.key_info: dict[str, Any] = {
            "limit": None,
            "limit_remaining": None,
            "limit_reset": None,
            "usage": 0.0,
            "is_free_tier": False,
        }
        self.rejected_keys: set[str] = set()
        self.respond_with: Callable[[dict[str, Any]], FakeReply | None] | None = None
        # Chat completions: the reasoning sent back when a request asks for `reasoning` (OpenRouter's field).
        self.reasoning_text = "Let me think about that."
        # OpenRouter's reasoning_details (signed or encrypted provider reasoning) sent with any reasoning.
        self.reasoning_details: list[dict[str, Any]] | None = None
        # Anthropic's Messages API (POST /messages, what OpenRouter serves for Claude models).
        self.messages_usage: dict[str, Any] = json.loads(json.dumps(DEFAULT_MESSAGES_USAGE))
        self.messages_tool_call: tuple[str, dict[str, Any]] | None = None  # (tool name, input) to call
        self.thinking_text = "Let me think about that."
        # Chat completions carrying OpenRouter's `openrouter:web_search` server tool: the reply cites these
        # (url, title) as markdown links with url_citation annotations, and usage reports one search.
        self.web_results: list[tuple[str, str]] = list(DEFAULT_WEB_RESULTS)
        self._signing_key = secrets.token_bytes(16)
        self.requests: list[RecordedRequest] = []

        self._failures: deque[_Failure] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._issued: dict[str, dict[str, Any]] = {}
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._templates: dict[tuple[Any, ...], list[bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address keeps its brackets
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post(f"{API_PREFIX}/chat/completions", self._chat_completions)
        app.router.add_post(f"{API_PREFIX}/completions", self._completions)
        app.router.add_post(f"{API_PREFIX}/messages", self._messages)
        app.router.add_get(f"{API_PREFIX}/models", self._models)
        app.router.add_get(f"{API_PREFIX}/generation", self._generation)
        app.router.add_get(f"{API_PREFIX}/key", self._key)
        app.router.add_post(f"{API_PREFIX}/audio/transcriptions", self._transcriptions)
        return app

    async def start_async(self, *, backlog: int = 1024) -> None:
        """Start on the running loop (standalone mode and the background thread both use this)."""
        # handler_cancellation: a client that disconnects cancels its handler, which is how we see it.
        self._runner = web.AppRunner(self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, backlog=backlog, ssl_context=self.ssl_context)
        await site.start()

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        if errors:
            raise errors[0]
        return self

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._stopping = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- programming and inspecting -------------------------------------------------------------

    def fail_next(self, kind: str, times: int = 1, *, endpoint: str | None = None) -> None:
        """Make the next `times` requests fail as `kind` (see FAILURE_KINDS).

        `endpoint` (e.g. "/models", "/audio/transcriptions") limits it to that path; by default it
        applies to the generating endpoints, /chat/completions and /completions.
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of {sorted(FAILURE_KINDS)}")
        with self._lock:
            self._failures.append(_Failure(kind=kind, times=times, endpoint=endpoint))

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self.requests.clear()
            self._issued.clear()

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == f"{API_PREFIX}{endpoint}"]

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def wait_for_requests(self, count: int, timeout: float = 5) -> list[RecordedRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"fake upstream saw {len(self.requests)} requests, expected {count}")
            return list(self.requests)

    def wait_for_cancellation(self, timeout: float = 5) -> RecordedRequest:
        """The first request whose client went away before the response finished."""
        with self._changed:
            if not self._changed.wait_for(lambda: any(r.cancelled for r in self.requests), timeout):
                raise TimeoutError("no request to the fake upstream was cancelled")
            return next(r for r in self.requests if r.cancelled)

    def wait_until_finished(self, timeout: float = 5) -> list[RecordedRequest]:
        """Wait until every recorded request either completed or was cancelled."""
        with self._changed:
            if not self._changed.wait_for(lambda: all(r.completed or r.cancelled for r in self.requests), timeout):
                raise TimeoutError("some requests to the fake upstream are still open")
            return list(self.requests)

    def issued_generation_ids(self) -> list[str]:
        return list(self._issued)

    # ---- internals ------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _take_failure(self, path: str) -> str | None:
        if not self._failures:
            return None
        endpoint = path.removeprefix(API_PREFIX)
        with self._lock:
            for failure in self._failures:
                matches = endpoint == failure.endpoint if failure.endpoint else endpoint in GENERATING_ENDPOINTS
                if matches:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure.kind
        return None

    def _new_id(self) -> str:
        return f"gen-{int(time.time())}-{self._prefix}{next(self._counter):08d}"

    async def _record(self, request: web.Request, *, multipart: bool = False) -> tuple[RecordedRequest | None, Any]:
        """Parse the body; with recording on, also store the request. Returns (record, parsed body)."""
        parsed: Any = None
        form: dict[str, Any] | None = None
        raw = b""
        if request.method == "POST":
            if multipart:
                form = {}
                post = await request.post()
                for name, value in post.items():
                    if isinstance(value, web.FileField):
                        content = value.file.read()
                        form[name] = {
                            "filename": value.filename,
                            "content_type": value.content_type,
                            "size": len(content),
                        }
                    elif name in form:
                        existing = form[name]
                        form[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
                    else:
                        form[name] = value
                parsed = form
            else:
                raw = await request.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
        if not self.record:
            return None, parsed
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=None if multipart else parsed,
            form=form,
            body=raw,
        )
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        return record, parsed

    def _finish(self, record: RecordedRequest | None, *, cancelled: bool = False) -> None:
        if record is None:
            return
        if cancelled and not self._stopping:
            record.cancelled = True
        else:
            record.completed = True
        self._notify()

    async def _sleep_ms(self, ms: float) -> None:
        if ms > 0:
            await asyncio.sleep(ms / 1000)

    def _error_response(self, status: int, *, headers: dict[str, str] | None = None) -> web.Response:
        error_type, message, code = _ERRORS.get(status, ("server_error", f"HTTP {status}", None))
        if status == 400:
            error: dict[str, Any] = {"message": message, "type": error_type, "param": "messages", "code": code}
        else:
            # OpenRouter's shape: a numeric code equal to the status, plus metadata.
            error = {"message": message, "code": status, "metadata": {"provider_name": "FakeProvider"}}
        return web.json_response({"error": error}, status=status, headers=headers)

    async def _early_failure(self, kind: str, record: RecordedRequest | None) -> web.StreamResponse | None:
        """Failures that happen before any byte of a response; None if `kind` is a later one."""
        if kind.isdigit():
            status = int(kind)
            headers = {"retry-after": "1"} if status == 429 else None
            return self._error_response(status, headers=headers)
        if kind == "timeout_before_headers":
            await asyncio.sleep(self.hang_seconds)
            return self._error_response(504)
        if kind == "error_body_200":
            # OpenRouter's answer when the provider fails after the request was accepted: 200, no choices.
            error = {"message": "Provider returned error", "code": 502, "metadata": {"provider_name": "FakeProvider"}}
            return web.json_response({"error": error})
        return None

    # ---- generating endpoints -------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, kind="chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, kind="completion")

    async def _generate(self, request: web.Request, *, kind: str) -> web.StreamResponse:
        record, body = await self._record(request)
        failure = self._take_failure(request.path)
        if record is not None:
            record.failure = failure
        try:
            await self._sleep_ms(self.latency_ms)
            if failure is not None:
                early = await self._early_failure(failure, record)
                if early is not None:
                    self._finish(record)
                    return early
            if not isinstance(body, dict):
                self._finish(record)
                return self._error_response(400)
            plan = self._plan(body, kind=kind, failure=failure)
            stream = bool(body.get("stream"))
            if record is not None:
                record.generation_id = plan.gen_id
                record.stream = stream
                if self.record:
                    self._issued[plan.gen_id] = plan.usage
            if stream:
                response = await self._stream(request, plan, failure, record)
            else:
                response = await self._complete(request, plan, failure, record)
        except (asyncio.CancelledError, ConnectionError):
            self._finish(record, cancelled=True)
            raise
        self._finish(record)
        return response

    def _plan(self, body: dict[str, Any], *, kind: str, failure: str | None) -> _Plan:
        model = body.get("model") if isinstance(body.get("model"), str) else "unknown"
        usage = ABSURD_USAGE if failure == "absurd_usage" else self.usage
        options = body.get("stream_options")
        include_usage = self.always_send_usage or (isinstance(options, dict) and options.get("include_usage") is True)
        text: str | None = self.reply_text
        tool: tuple[str, str] | None = None
        if kind == "chat":
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            tool_results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
            if tool_results:
                text = f"The tool returned: {_content_text(tool_results[-1].get('content'))}"
            elif body.get("tools") and body.get("tool_choice") != "none":
                name = _chosen_function(body)
                if name:
                    tool, text = (name, self.tool_arguments), None
        reasoning = self.reasoning_text if kind == "chat" and body.get("reasoning") else None
        reply = self.respond_with(body) if kind == "chat" and self.respond_with is not None else None
        if reply is not None:
            text, tool = reply.text, reply.tool
            reasoning = reply.reasoning if reply.reasoning is not None else reasoning
            if reply.usage is not None and failure != "absurd_usage":
                usage = reply.usage
        citations: list[dict[str, Any]] = []
        if kind == "chat" and text is not None and tool is None and _offers_web_search(body):
            text, citations = _cite(text, self.web_results)
            usage = {**usage, "server_tool_use": {"web_search_requests": 1}}
        return _Plan(
            gen_id=self._new_id(),
            model=model,
            kind=kind,
            text=text,
            tool=tool,
            usage=usage,
            include_usage=include_usage,
            reasoning=reasoning,
            reasoning_details=json.dumps(self.reasoning_details) if reasoning and self.reasoning_details else None,
            citations=json.dumps(citations) if citations else None,
        )

    def _frames(self, plan: _Plan, *, stream: bool) -> list[bytes]:
        """The response body (one element) or SSE frames, with id and created filled in.

        Templates are cached per shape so the hot path only does two bytes.replace per frame.
        """
        usage_json = json.dumps(plan.usage, sort_keys=True)
        key = (
            plan.kind,
            stream,
            plan.model,
            plan.text,
            plan.tool,
            usage_json,
            plan.include_usage,
            self.chunks,
            plan.reasoning,
            plan.reasoning_details,
            plan.citations,
        )
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 256:
                self._templates.clear()
            template = _build_template(plan, stream=stream, chunks=self.chunks)
            self._templates[key] = template
        gen_id = plan.gen_id.encode()
        created = str(int(time.time())).encode()
        return [frame.replace(_ID.encode(), gen_id).replace(_CREATED.encode(), created) for frame in template]

    async def _complete(
        self, request: web.Request, plan: _Plan, failure: str | None, record: RecordedRequest | None
    ) -> web.StreamResponse:
        (body,) = self._frames(plan, stream=False)
        if failure in ("drop_mid_stream", "stall_after_first_chunk"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if failure == "stall_after_first_chunk":
                await asyncio.sleep(self.hang_seconds)
            _abort(request)
            return response
        if failure == "malformed_sse":
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        return web.Response(body=body, content_type="application/json")

    async def _stream(
        self, request: web.Request, plan: _Plan, failure: str | None, record: RecordedRequest | None
    ) -> web.StreamResponse:
        frames = self._frames(plan, stream=True)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await self._sleep_ms(self.first_chunk_delay_ms)
        if self.send_processing_comment:
            await response.write(PROCESSING_COMMENT)
        content_frames = len(frames) - 1 - (1 if plan.include_usage else 0)
        for index, frame in enumerate(frames):
            if index > 0:
                await self._sleep_ms(self.chunk_delay_ms)
            if index == 1 and failure == "stall_after_first_chunk":
                await asyncio.sleep(self.hang_seconds)
                _abort(request)
                return response
            if index == 1 and failure == "malformed_sse":
                await response.write(b"data: {this is not json\n\n")
            if index == 1 and failure == "malformed_error_sse":
                await response.write(b'data: {"error": {"message": broken}}\n\n')
            if index == 2 and failure == "drop_mid_stream":
                _abort(request)
                return response
            if index == min(2, content_frames - 1) and failure == "error_mid_stream":
                error = {"message": "Provider disconnected", "code": 502, "metadata": {"provider_name": "FakeProvider"}}
                await response.write(
                    b"data: "
                    + json.dumps(
                        {
                            "id": plan.gen_id,
                            "object": "chat.completion.chunk",
                            "error": error,
                            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                        }
                    ).encode()
                    + b"\n\n"
                )
                await response.write_eof()
                return response
            await response.write(frame)
            if record is not None:
                record.chunks_sent += 1
        await response.write_eof()
        return response

    # ---- Anthropic's Messages API -----------------------------------------------------------------

    def sign_thinking(self, thinking: str) -> str:
        """The signature this fake gives a thinking block; a changed block no longer matches it."""
        import base64
        import hashlib
        import hmac

        return base64.b64encode(hmac.new(self._signing_key, thinking.encode(), hashlib.sha256).digest()).decode()

    def _messages_error(self, status: int, error_type: str, message: str) -> web.Response:
        headers = {"retry-after": "1"} if status == 429 else None
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        return web.json_response(body, status=status, headers=headers)

    def _bad_signature(self, body: dict[str, Any]) -> str | None:
        """Like Anthropic: every thinking block sent back must carry the signature it was issued with."""
        for index, message in enumerate(body.get("messages") or []):
            if not isinstance(message, dict) or not isinstance(message.get("content"), list):
                continue
            for block in message["content"]:
                if isinstance(block, dict) and block.get("type") == "thinking":
                    if block.get("signature") != self.sign_thinking(str(block.get("thinking") or "")):
                        return f"messages.{index}.content: Invalid `signature` in `thinking` block"
        return None

    def _message_content(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """(content blocks, stop_reason) of the reply to a Messages request."""
        content: list[dict[str, Any]] = []
        thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
        if thinking.get("type") in ("enabled", "adaptive"):
            text = self.thinking_text
            content.append({"type": "thinking", "thinking": text, "signature": self.sign_thinking(text)})
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        results = [
            b for b in (last.get("content") if isinstance(last.get("content"), list) else []) if isinstance(b, dict)
        ]
        results = [b for b in results if b.get("type") == "tool_result"]
        tools = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        if results:
            content.append({"type": "text", "text": f"The tool returned: {_content_text(results[-1].get('content'))}"})
            return content, "end_turn"
        if self.messages_tool_call and self.messages_tool_call[0] in tools:
            name, arguments = self.messages_tool_call
            content.append(
                {"type": "tool_use", "id": "toolu_" + secrets.token_hex(10), "name": name, "input": arguments}
            )
            return content, "tool_use"
        content.append({"type": "text", "text": self.reply_text})
        return content, "end_turn"

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        record, body = await self._record(request)
        failure = self._take_failure(request.path)
        if record is not None:
            record.failure = failure
        try:
            await self._sleep_ms(self.latency_ms)
            if failure is not None and failure.isdigit():
                self._finish(record)
                status = int(failure)
                error_type, message, _ = _ERRORS.get(status, ("api_error", f"HTTP {status}", None))
                return self._messages_error(status, error_type, message)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                self._finish(record)
                return self._messages_error(400, "invalid_request_error", "messages: Field required")
            if (problem := self._bad_signature(body)) is not None:
                self._finish(record)
                return self._messages_error(400, "invalid_request_error", problem)
            content, stop_reason = self._message_content(body)
            usage = self.messages_usage
            if stop_reason != "tool_use" and _offers_claude_web_search(body):
                usage = {**usage, "server_tool_use": {"web_search_requests": 1}}  # as Anthropic reports a search
            message_id = "msg_" + self._new_id().removeprefix("gen-").replace("-", "")
            model = body.get("model") if isinstance(body.get("model"), str) else "unknown"
            stream = body.get("stream") is True
            if record is not None:
                record.generation_id = message_id
                record.stream = stream
                # /generation answers for it too, in chat terms (prompt includes cache reads and writes).
                tokens = usage
                cached = tokens.get("cache_read_input_tokens", 0)
                self._issued[message_id] = {
                    "prompt_tokens": tokens["input_tokens"] + cached + tokens.get("cache_creation_input_tokens", 0),
                    "completion_tokens": tokens["output_tokens"],
                    "prompt_tokens_details": {"cached_tokens": cached},
                }
            if stream:
                response = await self._stream_message(
                    request, message_id, model, content, stop_reason, usage, failure, record
                )
            else:
                message = {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                }
                response = web.json_response(message)
                if record is not None:
                    record.sent = response.body
        except (asyncio.CancelledError, ConnectionError):
            self._finish(record, cancelled=True)
            raise
        self._finish(record)
        return response

    async def _stream_message(
        self,
        request: web.Request,
        message_id: str,
        model: str,
        content: list[dict[str, Any]],
        stop_reason: str,
        usage: dict[str, Any],
        failure: str | None,
        record: RecordedRequest | None,
    ) -> web.StreamResponse:
        def event(name: str, payload: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

        start_usage = {**usage, "output_tokens": 1}
        frames = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        ]
        for index, block in enumerate(content):
            kind = block["type"]
            empty = {
                "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                "text": {"type": "text", "text": ""},
            }
            start = empty.get(kind) or {**block, "input": {}}
            frames.append(
                event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            )
            if index == 0:
                frames.append(event("ping", {"type": "ping"}))
            if kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": p} for p in _split(block["thinking"], 2)]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif kind == "text":
                deltas = [{"type": "text_delta", "text": p} for p in _split(block["text"], self.chunks)]
            else:
                arguments = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in _split(arguments, 3, words=False)]
            frames.extend(
                event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            )
            frames.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        frames.append(
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage},
            )
        )
        frames.append(event("message_stop", {"type": "message_stop"}))

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        if self.send_processing_comment:
            await response.write(PROCESSING_COMMENT)
        for index, frame in enumerate(frames):
            if index > 0:
                await self._sleep_ms(self.chunk_delay_ms)
            if index == 2 and failure == "drop_mid_stream":
                _abort(request)
                return response
            if index == 2 and failure == "error_mid_stream":
                await response.write(
                    event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                )
                await response.write_eof()
                return response
            if index == 1 and failure == "stall_after_first_chunk":
                await asyncio.sleep(self.hang_seconds)
                _abort(request)
                return response
            await response.write(frame)
            if record is not None:
                record.chunks_sent += 1
                record.sent += frame
        await response.write_eof()
        return response

    # ---- other endpoints ------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record, _ = await self._record(request)
        failure = self._take_failure(request.path)
        if failure and (early := await self._early_failure(failure, record)) is not None:
            self._finish(record)
            return early
        self._finish(record)
        return web.json_response({"data": self.models})

    async def _generation(self, request: web.Request) -> web.StreamResponse:
        record, _ = await self._record(request)
        failure = self._take_failure(request.path)
        if failure and (early := await self._early_failure(failure, record)) is not None:
            self._finish(record)
            return early
        self._finish(record)
        gen_id = request.query.get("id", "")
        override = self.generation_stats.get(gen_id)
        usage = self._issued.get(gen_id)
        if usage is None and override is None:
            if self.record or not gen_id.startswith("gen-"):
                return self._error_response(404)
            usage = self.usage
        return web.json_response({"data": generation_stats(gen_id, usage or self.usage, override or {})})

    async def _key(self, request: web.Request) -> web.StreamResponse:
        record, _ = await self._record(request)
        failure = self._take_failure(request.path)
        if failure and (early := await self._early_failure(failure, record)) is not None:
            self._finish(record)
            return early
        self._finish(record)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not key or key in self.rejected_keys:
            return web.json_response({"error": {"message": "User not found.", "code": 401}}, status=401)
        label = f"{key[:11]}...{key[-3:]}" if len(key) > 14 else key
        return web.json_response({"data": {"label": label, **self.key_info}})

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        record, form = await self._record(request, multipart=True)
        failure = self._take_failure(request.path)
        try:
            await self._sleep_ms(self.latency_ms)
            if failure and (early := await self._early_failure(failure, record)) is not None:
                self._finish(record)
                return early
        except asyncio.CancelledError:
            self._finish(record, cancelled=True)
            raise
        self._finish(record)
        form = form or {}
        if "file" not in form or "model" not in form:
            return self._error_response(400)
        fmt = form.get("response_format") or "json"
        text = self.transcript_text
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt == "srt":
            return web.Response(text=f"1\n00:00:00,000 --> 00:00:02,500\n{text}\n\n", content_type="text/plain")
        if fmt == "vtt":
            return web.Response(text=f"WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n{text}\n\n", content_type="text/vtt")
        words = max(1, len(text.split()))
        if fmt == "verbose_json":
            usage = self.transcription_usage or {"type": "duration", "seconds": 3}
            segment = {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": 2.5,
                "text": text,
                "tokens": list(range(50364, 50364 + words)),
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.1,
                "no_speech_prob": 0.01,
            }
            payload = {
                "task": "transcribe",
                "language": "english",
                "duration": 2.5,
                "text": text,
                "segments": [segment],
                "usage": usage,
            }
            return web.json_response(payload)
        if fmt != "json":
            return self._error_response(400)
        usage = self.transcription_usage or {
            "type": "tokens",
            "input_tokens": 40,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 40},
            "output_tokens": words * 2,
            "total_tokens": 40 + words * 2,
        }
        return web.json_response({"text": text, "usage": usage})


# ---- bodies ------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return json.dumps(content)


def _offers_claude_web_search(body: dict[str, Any]) -> bool:
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    return any(isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_") for tool in tools)


def _offers_web_search(body: dict[str, Any]) -> bool:
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    return any(isinstance(tool, dict) and tool.get("type") == "openrouter:web_search" for tool in tools)


def _cite(text: str, results: list[tuple[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """`text` followed by a markdown link per result, and OpenRouter's annotation for each link."""
    citations = []
    for url, title in results:
        link = f"[{title}]({url})"
        text += " " + link
        cited = {"url": url, "title": title, "content": f"What {title} says.", "start_index": len(text) - len(link)}
        citations.append({"type": "url_citation", "url_citation": {**cited, "end_index": len(text)}})
    return text, citations


def _chosen_function(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return name
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            name = (tool.get("function") or {}).get("name")
            if isinstance(name, str):
                return name
    return None


def _split(text: str, pieces: int, *, words: bool = True) -> list[str]:
    """Split `text` into at most `pieces` non-empty parts (whole words if `words`) that concatenate to it."""
    if not text:
        return [""]
    units = re.findall(r"\s*\S+\s*$|\s*\S+", text) if words else list(text)
    if "".join(units) != text:
        units = list(text)
    pieces = max(1, min(pieces, len(units)))
    size, extra = divmod(len(units), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append("".join(units[start:end]))
        start = end
    return parts


def _build_template(plan: _Plan, *, stream: bool, chunks: int) -> list[bytes]:
    """Body or SSE frames with the placeholders `@@ID@@` and `"@@CREATED@@"` (see FakeUpstream._frames)."""
    head = {"id": _ID, "provider": "FakeProvider", "model": plan.model}
    usage = plan.usage
    call_id = f"call_{_ID}" if plan.tool else None
    finish = "tool_calls" if plan.tool else "stop"

    def with_created(payload: dict[str, Any]) -> bytes:
        return json.dumps(payload, separators=(",", ":")).replace('"@@CREATED_VALUE@@"', _CREATED).encode()

    created = "@@CREATED_VALUE@@"
    if plan.kind == "completion":
        if not stream:
            payload = {
                **head,
                "object": "text_completion",
                "created": created,
                "choices": [{"index": 0, "text": plan.text, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            }
            return [with_created(payload)]
        parts = _split(plan.text or "", chunks)
        frames = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            choice = {"index": 0, "text": part, "logprobs": None, "finish_reason": "stop" if last else None}
            frames.append(
                b"data: "
                + with_created({**head, "object": "text_completion", "created": created, "choices": [choice]})
                + b"\n\n"
            )
        if plan.include_usage:
            frames.append(
                b"data: "
                + with_created({**head, "object": "text_completion", "created": created, "choices": [], "usage": usage})
                + b"\n\n"
            )
        frames.append(DONE)
        return frames

    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None}
        if plan.reasoning:
            message["reasoning"] = plan.reasoning
        if plan.reasoning_details:
            message["reasoning_details"] = json.loads(plan.reasoning_details)
        if plan.citations:
            message["annotations"] = json.loads(plan.citations)
        if plan.tool:
            name, arguments = plan.tool
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ]
        payload = {
            **head,
            "object": "chat.completion",
            "created": created,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish,
                    "native_finish_reason": finish,
                }
            ],
            "usage": usage,
        }
        return [with_created(payload)]

    usage_null = {"usage": None} if plan.include_usage else {}
    deltas: list[dict[str, Any]] = []
    if plan.reasoning:
        deltas.extend({"role": "assistant", "content": "", "reasoning": piece} for piece in _split(plan.reasoning, 2))
        if plan.reasoning_details:
            deltas[-1]["reasoning_details"] = json.loads(plan.reasoning_details)
    if plan.tool:
        name, arguments = plan.tool
        pieces = _split(arguments, max(2, chunks - 1), words=False)
        deltas.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                ],
            }
        )
        deltas.extend({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces)
    else:
        parts = _split(plan.text or "", chunks)
        deltas.append({"role": "assistant", "content": parts[0]})
        deltas.extend({"content": part} for part in parts[1:])
        if plan.citations:
            deltas[-1]["annotations"] = json.loads(plan.citations)  # OpenRouter sends them with the last text
    frames = []
    for i, delta in enumerate(deltas):
        last = i == len(deltas) - 1
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish if last else None}
        if last:
            choice["native_finish_reason"] = finish
        frames.append(
            b"data: "
            + with_created(
                {**head, "object": "chat.completion.chunk", "created": created, "choices": [choice], **usage_null}
            )
            + b"\n\n"
        )
    if plan.include_usage:
        frames.append(
            b"data: "
            + with_created(
                {**head, "object": "chat.completion.chunk", "created": created, "choices": [], "usage": usage}
            )
            + b"\n\n"
        )
    frames.append(DONE)
    return frames


def generation_stats(gen_id: str, usage: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """OpenRouter's GET /generation `data` object, derived from the usage the generation reported."""
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    stats: dict[str, Any] = {
        "id": gen_id,
        "upstream_id": "chatcmpl-" + gen_id.removeprefix("gen-"),
        "total_cost": 0.0000123,
        "cache_discount": None,
        "upstream_inference_cost": None,
        "created_at": "2026-11-22T00:00:00.000000+00:00",
        "model": "openai/gpt-5-mini",
        "app_id": None,
        "streamed": True,
        "cancelled": False,
        "provider_name": "FakeProvider",
        "latency": 120,
        "moderation_latency": None,
        "generation_time": 300,
        "finish_reason": "stop",
        "native_finish_reason": "stop",
        "tokens_prompt": prompt,
        "tokens_completion": completion,
        "native_tokens_prompt": prompt,
        "native_tokens_completion": completion,
        "native_tokens_completion_images": 0,
        "native_tokens_reasoning": reasoning,
        "native_tokens_cached": cached,
        "num_media_prompt": None,
        "num_media_completion": None,
        "num_search_results": None,
        "origin": "",
        "usage": 0.0000123,
        "is_byok": False,
        "api_type": "completions",
    }
    stats.update(override)
    return stats


def _abort(request: web.Request) -> None:
    """Drop the TCP connection without finishing the response (an RST, not a clean close)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


# ---- standalone --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for benchmarks (loopback only).")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0)
    parser.add_argument(
        "--chunks", type=int, default=5, help="stream chunks (the reply is padded to have enough words)"
    )
    parser.add_argument("--reply-text", default=DEFAULT_REPLY)
    parser.add_argument("--processing-comment", action="store_true", help="send ': OPENROUTER PROCESSING' first")
    parser.add_argument("--always-send-usage", action="store_true", help="usage chunk on every stream (OpenRouter)")
    parser.add_argument("--record", action="store_true", help="keep every request in memory (grows without bound)")
    parser.add_argument(
        "--max-seconds", type=float, default=0, help="exit after this many seconds (0: run until killed)"
    )
    args = parser.parse_args(argv)

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover -- plain asyncio is fine, just slower
        pass

    reply = args.reply_text
    missing = args.chunks - len(reply.split())
    if missing > 0:
        reply += " and more" * missing
    fake = FakeUpstream(port=args.port, latency_ms=args.latency_ms, record=args.record, reply_text=reply)
    fake.chunk_delay_ms = args.chunk_delay_ms
    fake.chunks = args.chunks
    fake.send_processing_comment = args.processing_comment
    fake.always_send_usage = args.always_send_usage

    async def serve() -> None:
        await fake.start_async(backlog=4096)
        print(f"fake upstream listening on {fake.base_url} (pid {os.getpid()})", flush=True)
        try:
            if args.max_seconds > 0:
                await asyncio.sleep(args.max_seconds)
            else:
                await asyncio.Event().wait()
        finally:
            await fake._cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
