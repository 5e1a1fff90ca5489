"""A lean HTTP/1.1 client for the gateway's JSON calls upstream: asyncio protocols and httptools (llhttp).

Chosen by measurement (docs/decisions.md): against the fake upstream on loopback, aiohttp's client
spent ~280 us of CPU per streamed call and this one 80-105 us, with the first chunk ~250 us sooner.
It does what those calls need and nothing else: POST a bytes body; keep-alive pools per origin, up to
settings.UPSTREAM_MAX_CONNECTIONS each; TLS; Content-Length, chunked and close-delimited responses;
separate connect, first-byte and between-chunk timeouts; backpressure (a slow client pauses the
upstream socket instead of buffering); and aborting the connection when a response is abandoned, which
is how an upstream learns to stop. No redirects, cookies, proxies or decompression.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from writingmate.background import run_in_background

_KEEPALIVE_SECONDS = 30.0
_DRAIN_SECONDS = 1.0  # how long the end of a finished stream (its last chunk marker) may take to come
_PAUSE_ABOVE_BYTES = 256 * 1024  # buffered and not yet taken by the relay
_RESUME_BELOW_BYTES = 64 * 1024
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class UpstreamUnreachable(ConnectionError):
    """No connection, or it failed before the response began: nothing reached the upstream's answer."""


class UpstreamDropped(ConnectionError):
    """The connection failed or the response was malformed after it began."""


class UpstreamTimeout(TimeoutError):
    def __init__(self, message: str, *, before_headers: bool) -> None:
        super().__init__(message)
        self.before_headers = before_headers


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    between_chunks: float


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@functools.lru_cache(maxsize=64)
def _split(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(parts.scheme, parts.hostname, port), target


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _request_bytes(origin: _Origin, target: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers.items():
        if any(bad in name or bad in value for bad in _FORBIDDEN_IN_HEADERS):
            raise ValueError(f"header {name!r} holds a line break or NUL")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.deadline = 0.0
        self.timeouts: Timeouts | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.received_any = False

    # ---- the request ----------------------------------------------------------------------------

    def send(self, payload: bytes, timeouts: Timeouts) -> None:
        self._reset()
        self.timeouts = timeouts
        self.deadline = self.loop.time() + timeouts.first_byte
        self.timer = self.loop.call_at(self.deadline, self._check_deadline)
        self.transport.write(payload)

    async def next_event(self) -> None:
        """Wait until something arrives (headers, a chunk, the end) or the response fails."""
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _RESUME_BELOW_BYTES and not self.closed:
            self.paused = False
            self.deadline = self.loop.time() + self.timeouts.between_chunks  # the pause was ours, not theirs
            self.transport.resume_reading()
        return chunk

    def finished_cleanly(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def abort(self) -> None:
        self._stop_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # ---- the protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.timeouts is not None:
            self.deadline = self.loop.time() + (
                self.timeouts.between_chunks if self.headers_done else self.timeouts.first_byte
            )
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDropped(f"the upstream sent malformed HTTP ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.complete or self.timeouts is None:
            return
        if self.headers_done and self._body_ends_at_close():
            self.on_message_complete()
            return
        if not self.received_any:
            self._fail(UpstreamUnreachable(f"the connection closed before a response ({exc or 'EOF'})"))
        else:
            self._fail(UpstreamDropped(f"the connection closed in the middle of the response ({exc or 'EOF'})"))

    def _body_ends_at_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        if self.timeouts is not None and not self.complete:
            # The between-chunks timeout may be shorter than the first-byte one the timer was set for.
            self.deadline = self.loop.time() + self.timeouts.between_chunks
            self._stop_timer()
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(bytes(body))
        self.buffered += len(body)
        if self.buffered > _PAUSE_ABOVE_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._stop_timer()
        self._wake()

    # ---- failures and timeouts ------------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.abort()
        self._wake()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_deadline(self) -> None:
        # One timer per response, moved lazily: arriving data only pushes `deadline` forward.
        self.timer = None
        if self.complete or self.closed:
            return
        if self.paused or self.loop.time() < self.deadline:
            delay = self.timeouts.between_chunks if self.paused else 0
            self.timer = self.loop.call_at(max(self.deadline, self.loop.time() + delay), self._check_deadline)
            return
        if self.headers_done:
            self._fail(UpstreamTimeout("the upstream stalled in the middle of its response", before_headers=False))
        else:
            self._fail(UpstreamTimeout("the upstream did not respond in time", before_headers=True))


class _Pool:
    """Idle keep-alive connections to one origin, newest first, and a cap on open connections."""

    def __init__(self, origin: _Origin, max_connections: int) -> None:
        self.origin = origin
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def connection(self, connect_timeout: float) -> tuple[_Connection, bool]:
        """(a connection, whether it was used before)."""
        loop = asyncio.get_running_loop()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and loop.time() - connection.idle_since < _KEEPALIVE_SECONDS:
                return connection, True
            connection.abort()
        tls = self.origin.scheme == "https"
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.origin.host,
                    self.origin.port,
                    ssl=_tls_context() if tls else None,
                    server_hostname=self.origin.host if tls else None,
                )
        except TimeoutError as exc:
            raise UpstreamUnreachable("timed out connecting to the upstream") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise UpstreamUnreachable(f"cannot connect to the upstream ({type(exc).__name__})") from exc
        return connection, False

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        self.idle.append(connection)

    def close(self) -> None:
        for connection in self.idle:
            connection.abort()
        self.idle.clear()


class Response:
    """An upstream response whose headers have arrived; its body is read or streamed, then released."""

    def __init__(self, pool: _Pool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in connection.headers}
        self._released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamTimeout or UpstreamDropped if the upstream fails midway."""
        connection = self._connection
        while True:
            while connection.chunks:
                yield connection.take_chunk()
            if connection.complete:
                return
            await connection.next_event()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self, *, finished: bool = False) -> None:
        """Back to the pool when the body was read to its end; otherwise the connection is aborted.

        `finished`: the caller has all it wanted (a stream's `[DONE]`) though the body's end may still
        be on its way; the connection waits for it in the background instead of being dropped.
        """
        if self._released:
            return
        self._released = True
        connection = self._connection
        if finished and not connection.complete and not connection.closed and connection.error is None:
            run_in_background(self._drain())
            return
        self._settle()

    def _settle(self) -> None:
        connection = self._connection
        if connection.finished_cleanly() and not connection.chunks:
            self._pool.put_back(connection)
        else:
            connection.abort()
        self._pool.slots.release()

    async def _drain(self) -> None:
        connection = self._connection
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                while not connection.complete and not connection.chunks:
                    await connection.next_event()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._settle()  # pooled only if the body ended with nothing more after the caller's end


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Origin, _Pool]] = weakref.WeakKeyDictionary()


def _pool_for(origin: _Origin, max_connections: int) -> _Pool:
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(origin)
    if pool is None:
        pool = pools[origin] = _Pool(origin, max_connections)
    return pool


async def post(url: str, *, headers: dict[str, str], body: bytes, timeouts: Timeouts, max_connections: int) -> Response:
    """POST and wait for the response headers. A pooled connection that turns out to be closed (the
    upstream dropped it while idle) is replaced once, at once: the request never reached the upstream."""
    origin, target = _split(url)
    payload = _request_bytes(origin, target, headers, body)
    pool = _pool_for(origin, max_connections)
    await pool.slots.acquire()
    try:
        for attempt in (1, 2):
            connection, reused = await pool.connection(timeouts.connect)
            connection.send(payload, timeouts)
            try:
                while not connection.headers_done:
                    await connection.next_event()
            except UpstreamUnreachable:
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                connection.abort()
                raise
            return Response(pool, connection)
    except BaseException:
        pool.slots.release()
        raise
    raise AssertionError("unreachable")


def close_pools() -> None:
    """Abort this loop's idle upstream connections (at shutdown)."""
    for pool in _pools.pop(asyncio.get_running_loop(), {}).values():
        pool.close()
