"""Server-Sent Events: relaying an upstream stream byte for byte, and the few edits we must make.

Events are forwarded exactly as the upstream framed them. The gateway always asks the upstream for
usage; the final usage chunk reaches the client only if it asked (`stream_options.include_usage`).
A failure after the first byte becomes one `data: {"error": ...}` event (which the SDKs raise),
and the stream ends cleanly. What was delivered is kept, unparsed, so a client that disconnects can
still be billed for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.http import StreamingHttpResponse

from gateway import metrics
from gateway.providers.base import ProviderError, UpstreamResponse
from writingmate import wire_json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = b": keep-alive\n\n"
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_ERROR_KEY = re.compile(rb'"error"\s*:\s*[{"]')


@dataclass
class CallOutcome:
    """What happened to one upstream call, filled in as it goes; read by billing at the end."""

    started: float = field(default_factory=time.monotonic)
    status: str = "succeeded"  # billing.models.UsageEvent.Status
    usage: dict | None = None
    generation_id: str = ""
    delivered: list[bytes] = field(default_factory=list)
    first_byte_at: float | None = None
    reached_upstream: bool = False
    error_kind: str = ""  # gateway.metrics.UPSTREAM_ERROR_KINDS, when the upstream misbehaved
    upstream_error_relayed: bool = False  # the upstream's own error event reached the client
    finished: bool = False  # the upstream's stream reached its end marker ([DONE], message_stop)


def web_search_requests(usage: object) -> int:
    """How many hosted web searches an upstream's usage reports: `server_tool_use.web_search_requests`,
    spelled alike in OpenRouter's chat usage and Anthropic's Messages usage. 0 when absent or absurd."""
    server = usage.get("server_tool_use") if isinstance(usage, dict) else None
    count = server.get("web_search_requests") if isinstance(server, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 10**6 else 0


def error_event(message: str, *, code: str, error_type: str = "server_error") -> bytes:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def next_boundary(buffer: bytes, start: int) -> tuple[int, int]:
    """(index, length) of the next blank line that ends an event, or (-1, 0)."""
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf != -1 and (lf == -1 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf != -1 else (-1, 0)


def take_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole SSE events `buffer` starts with, each with the blank line that ends it, and the rest."""
    if b"\r" not in buffer:
        # LF only, the usual stream: one split in C. Searching for both endings event by event would
        # scan the rest of the buffer for a CRLF one each time.
        *events, rest = buffer.split(b"\n\n")
        return [event + b"\n\n" for event in events], rest
    events, start = [], 0
    while True:
        index, length = next_boundary(buffer, start)
        if index == -1:
            return events, buffer[start:]
        events.append(buffer[start : index + length])
        start = index + length


def split_events(relayed: bytes) -> list[bytes]:
    """The whole SSE events in a chunk `relay_events` yielded (it yields several that arrived together)."""
    events, rest = take_events(relayed)
    if rest.strip():
        events.append(rest)
    return events


def data_of(event: bytes) -> bytes | None:
    """The data of one SSE event (its `data:` lines joined), or None if it has none."""
    # The usual event, one `data: ` line and its blank line, is read with the cheapest checks: bytes
    # methods with arguments cost ~1.5 k instructions each in argument parsing, per event.
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2 and b"\r" not in event:
        return event[6:-2].strip()
    # Else one data line ("data: ..." or "event: ...\ndata: ...") followed only by line ends: not split.
    if event.startswith(b"data: "):
        start = 6
    else:
        line = event.find(b"\ndata: ")
        start = line + 7 if line != -1 and b"data:" not in event[:line] else -1
    if start != -1:
        end = event.find(b"\n", start)
        if end == -1:
            end = len(event)
        payload = event[start:end].rstrip(b"\r")
        if b"\r" not in payload and not event[end:].strip():
            return payload.strip()
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines).strip()


def _openai_error_event(error: object) -> bytes:
    """The upstream's error in OpenAI's shape: OpenRouter sends a numeric `code`, no `type`, and `metadata`."""
    if not isinstance(error, dict):
        return error_event(str(error), code="upstream_error")
    code = error.get("code")
    return error_event(
        str(error.get("message") or "The upstream failed while streaming."),
        code=code if isinstance(code, str) and code else "upstream_error",
        error_type=str(error["type"]) if isinstance(error.get("type"), str) else "server_error",
    )


def _without_usage(event: dict) -> bytes:
    event.pop("usage", None)
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


async def send_event_stream(
    events: AsyncGenerator[bytes, None],
    send: Callable[[dict], Awaitable[None]],
    *,
    heartbeat: bytes = HEARTBEAT,
    opening: bytes = b"",
) -> None:
    """Send each chunk of an SSE body as it comes and, whenever nothing was sent for
    STREAM_HEARTBEAT_SECONDS, a `: keep-alive` comment, so idle-timeout proxies and clients keep a
    silent stream (a reasoning model thinking) open.

    `opening` leaves in the same send as the first chunk (one send fewer per stream), or in the first
    heartbeat's place if the upstream is silent that long; so it always comes first.

    One timer per stream, moved lazily: a sent chunk only records the time, so the hot path pays one
    clock read. A heartbeat is sent from the timer while the stream waits for its upstream; the next
    chunk waits for it to finish, so the two never interleave.
    """
    interval = settings.STREAM_HEARTBEAT_SECONDS
    if interval <= 0:
        async for chunk in events:
            if chunk:
                await send({"type": "http.response.body", "body": opening + chunk, "more_body": True})
                opening = b""
        if opening:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
        return
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    beating: asyncio.Task | None = None

    async def beat() -> None:
        nonlocal last_sent, opening
        body, opening = opening or heartbeat, b""
        with contextlib.suppress(Exception):  # a client that left: the stream's own send will find out
            await send({"type": "http.response.body", "body": body, "more_body": True})
        last_sent = loop.time()

    timer: asyncio.TimerHandle

    def check() -> None:
        nonlocal timer, beating
        now = loop.time()
        if beating is not None and beating.done():
            beating = None
        if now - last_sent >= interval and beating is None:
            beating = loop.create_task(beat())
            due = now + interval
        else:
            due = max(last_sent + interval, now + 0.001)
        timer = loop.call_at(due, check)

    timer = loop.call_at(last_sent + interval, check)
    try:
        async for chunk in events:
            if not chunk:
                continue
            if beating is not None:
                await beating
                beating = None
            if opening:
                chunk, opening = opening + chunk, b""
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            last_sent = loop.time()
        if opening:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
    finally:
        timer.cancel()
        if beating is not None:
            await beating


async def guard_relay(
    events: AsyncGenerator[bytes, None],
    upstream: UpstreamResponse,
    *,
    outcome: CallOutcome,
    error_event: Callable[[str, str], bytes],
) -> AsyncGenerator[bytes, None]:
    """`events`, one surface's relay of `upstream`, with what every relay does around it.

    A stream that breaks off, or ends before its end marker (`outcome.finished`) without having
    failed already, ends with `error_event(message, code)` in the surface's shape; a client that
    leaves is noted; the upstream connection is released (kept only after a finished stream).
    """
    metrics.stream_opened()
    try:
        async for chunk in events:
            yield chunk
        if not outcome.finished and outcome.status != "failed":
            outcome.status = "failed"
            outcome.error_kind = "stream_dropped"
            yield error_event("The upstream closed the stream before it finished.", "upstream_stream_incomplete")
    except ProviderError as exc:
        outcome.status = "failed"
        outcome.error_kind = "timeout" if exc.status == 504 else "stream_dropped"
        yield error_event(exc.message, exc.code)
    except asyncio.CancelledError:
        outcome.status = "client_disconnected"
        raise
    except GeneratorExit:
        if not outcome.finished:
            outcome.status = "client_disconnected"
        raise
    finally:
        metrics.stream_closed()
        await events.aclose()
        await upstream.close(finished=outcome.finished)


def relay_events(
    upstream: UpstreamResponse, *, include_usage: bool, outcome: CallOutcome
) -> AsyncGenerator[bytes, None]:
    return guard_relay(
        _chat_events(upstream, include_usage=include_usage, outcome=outcome),
        upstream,
        outcome=outcome,
        error_event=_chat_error_event,
    )


def _chat_error_event(message: str, code: str) -> bytes:
    return error_event(message, code=code)


async def _chat_events(
    upstream: UpstreamResponse, *, include_usage: bool, outcome: CallOutcome
) -> AsyncGenerator[bytes, None]:
    buffer = b""
    assert upstream.chunks is not None, "a streamed call always has its body's chunks"
    async for chunk in upstream.chunks:
        events, buffer = take_events(buffer + chunk if buffer else chunk)
        # Events that arrived together leave together: one send per upstream read, not per event.
        ready: list[bytes] = []
        for event in events:
            forwarded = _relay_one(event, include_usage=include_usage, outcome=outcome)
            if forwarded is _MALFORMED:
                outcome.status = "failed"
                outcome.error_kind = "malformed"
                ready.append(
                    error_event(
                        "The upstream sent a malformed event; the stream was stopped.",
                        code="upstream_malformed_stream",
                    )
                )
                yield b"".join(ready)
                return
            if forwarded:
                ready.append(forwarded)
            if event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]"):
                outcome.finished = True
        if ready:
            yield b"".join(ready)
        if outcome.finished:
            return
    if buffer.strip():
        forwarded = _relay_one(buffer + b"\n\n", include_usage=include_usage, outcome=outcome)
        if forwarded and forwarded is not _MALFORMED:
            yield forwarded
            outcome.finished = data_of(buffer) == b"[DONE]"


_MALFORMED = b"\x00malformed"


def _relay_one(event: bytes, *, include_usage: bool, outcome: CallOutcome) -> bytes:
    if event.startswith(b":"):
        return event  # an SSE comment, e.g. OpenRouter's keep-alive
    payload = data_of(event)
    if payload is None or payload == b"[DONE]":
        return event
    if not (payload.startswith(b"{") and payload.endswith(b"}")):
        return _MALFORMED
    if outcome.first_byte_at is None:
        outcome.first_byte_at = time.monotonic()
        try:
            outcome.generation_id = str(wire_json.loads(payload).get("id") or "")
        except ValueError:
            return _MALFORMED
    if _ERROR_KEY.search(payload):
        try:
            parsed = wire_json.loads(payload)
        except ValueError:
            return _MALFORMED
        if parsed.get("error"):
            outcome.status = "failed"
            outcome.upstream_error_relayed = True
            return _openai_error_event(parsed["error"])
    if _USAGE_OBJECT.search(payload):
        try:
            parsed = wire_json.loads(payload)
        except ValueError:
            return _MALFORMED
        if isinstance(parsed.get("usage"), dict):
            outcome.usage = parsed["usage"]
            if not include_usage:
                if not parsed.get("choices"):
                    return b""  # the usage-only chunk the client did not ask for
                event = _without_usage(parsed)
    outcome.delivered.append(payload)
    return event


class EventStreamResponse(StreamingHttpResponse):
    """Server-Sent Events; gateway.asgi sends `events` as they come, without Django's per-chunk wrappers."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        headers: dict[str, str],
        heartbeat: bytes = HEARTBEAT,
        opening: bytes = b"",
    ) -> None:
        super().__init__(events, content_type="text/event-stream; charset=utf-8")
        self.events = events
        self.heartbeat = heartbeat  # what a silent stream sends (Anthropic's surface: an `event: ping`)
        self.opening = opening  # what it opens with (send_event_stream)
        for name, value in {**SSE_HEADERS, **headers}.items():
            self[name] = value
