"""A small asyncio Redis client for the few commands on every /v1 request.

redis-py's asyncio client costs ~200 us of CPU per command here (pool, retries, event hooks);
this one writes each command straight to one connection per event loop and matches replies to
callers in order, so concurrent requests pipeline for free: ~30-60 us per command (measured in
docs/benchmarks.md). It speaks RESP2 and nothing more. Any error, or a reply that does not arrive
within the timeout, closes the connection (failing whatever waits on it), so replies never pair
with the wrong caller; the next command reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from urllib.parse import unquote, urlparse


class RedisUnavailable(ConnectionError):
    pass


class RedisReplyError(Exception):
    """Redis answered with an error reply (e.g. NOSCRIPT, WRONGTYPE)."""


class _Incomplete(Exception):
    pass


def _encode(args: tuple[bytes | str | int | float, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _parse(buffer: bytes, pos: int) -> tuple[object, int]:
    """One RESP2 value starting at `pos`, and the position after it; _Incomplete if it has not all arrived."""
    end = buffer.find(b"\r\n", pos)
    if end == -1:
        raise _Incomplete
    kind, line = buffer[pos : pos + 1], buffer[pos + 1 : end]
    pos = end + 2
    if kind == b"$":
        length = int(line)
        if length == -1:
            return None, pos
        if len(buffer) < pos + length + 2:
            raise _Incomplete
        return buffer[pos : pos + length], pos + length + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return RedisReplyError(line.decode(errors="replace")), pos
    if kind == b"*":
        count = int(line)
        if count == -1:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buffer, pos)
            items.append(item)
        return items, pos
    raise RedisReplyError(f"unexpected reply type {kind!r}")


class _Connection(asyncio.Protocol):
    """One connection; replies go to waiters in order. One timer watches the oldest unanswered command,
    so a command costs no timer of its own."""

    def __init__(self, timeout_seconds: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future] = deque()
        self.deadlines: deque[float] = deque()  # when each waiting command's reply is due
        self.timeout_seconds = timeout_seconds
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        while self.waiting:
            try:
                reply, pos = _parse(self.buffer, pos)
            except _Incomplete:
                break
            waiter = self.waiting.popleft()
            self.deadlines.popleft()
            if not waiter.done():
                if isinstance(reply, RedisReplyError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        self.buffer = self.buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisUnavailable(f"Redis connection lost: {exc}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, *payloads: bytes) -> list[asyncio.Future]:
        """Write the commands in one go; a future per reply, in order."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.timeout_seconds
        waiters = []
        for _ in payloads:
            waiter = loop.create_future()
            self.waiting.append(waiter)
            self.deadlines.append(due)
            waiters.append(waiter)
        if self.timer is None:
            self.timer = loop.call_at(self.deadlines[0], self._check_deadline)
        self.transport.write(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        return waiters

    def _check_deadline(self) -> None:
        self.timer = None
        if not self.deadlines:
            return
        if self.deadlines[0] <= asyncio.get_running_loop().time():
            self.fail(RedisUnavailable("Redis did not answer in time"))
        else:
            self.timer = asyncio.get_running_loop().call_at(self.deadlines[0], self._check_deadline)


class FastRedis:
    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"FastRedis speaks plain redis:// only, not {parsed.scheme}://")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.db = int(parsed.path.lstrip("/") or 0)
        self.timeout_seconds = timeout_seconds
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is not None and not self._connection.closed:
                return self._connection
            try:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(self.timeout_seconds), self.host, self.port),
                    self.timeout_seconds,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisUnavailable(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from exc
            setup = []
            if self.password is not None:
                setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            for command in setup:
                await connection.send(_encode(command))[0]
            self._connection = connection
            return connection

    async def execute(self, *args: bytes | str | int | float) -> object:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(_encode(args))[0]

    async def execute_many(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[object]:
        """Several commands in one write; each reply, or its RedisReplyError, in order.

        RedisUnavailable if the connection fails before every reply has come.
        """
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        waiters = connection.send(*(_encode(command) for command in commands))
        try:
            await waiters[-1]  # replies come in order: the last one means all have come
        except RedisReplyError:
            pass
        return [waiter.exception() or waiter.result() for waiter in waiters]

    async def get(self, key: str) -> bytes | None:
        return await self.execute("GET", key)

    async def mget(self, *keys: str) -> list[bytes | None]:
        return await self.execute("MGET", *keys)  # type: ignore[return-value]

    async def set(self, key: str, value: bytes | str, *, ex: int | None = None, nx: bool = False) -> bool:
        args: list[bytes | str | int] = ["SET", key, value]
        if ex is not None:
            args += ["EX", ex]
        if nx:
            args.append("NX")
        return await self.execute(*args) == "OK"

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.fail(RedisUnavailable("client closed"))
            self._connection = None


class Script:
    """A Lua script run by its SHA1, loaded on first use (EVAL) when the server does not know it.

    Called like redis-py's scripts: `await script(keys=[...], args=[...])`.
    """

    def __init__(self, client: FastRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, *, keys: list[str], args: list[object]) -> object:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute("EVAL", self.source, len(keys), *keys, *args)

    async def many(self, calls: list[tuple[list[str], list[object]]]) -> list[object]:
        """Run the script once per (keys, args), all in one write. Raises the first error reply."""
        results = await self.client.execute_many(
            [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args in calls]
        )
        for index, result in enumerate(results):
            if isinstance(result, RedisReplyError):
                if not str(result).startswith("NOSCRIPT"):
                    raise result
                keys, args = calls[index]
                results[index] = await self(keys=keys, args=args)
        return results
