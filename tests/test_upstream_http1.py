"""The lean upstream HTTP/1.1 client (gateway.providers.http1) against small loopback servers that
misbehave on purpose: keep-alive, idle connections the server dropped, every way a body can end,
backpressure, and headers that could smuggle a second request."""

from __future__ import annotations

import asyncio

import pytest

from gateway.providers import http1
from tests.support import run_async

TIMEOUTS = http1.Timeouts(connect=2, first_byte=2, between_chunks=2)


class Server:
    """A loopback server; `respond(reader, writer)` answers one request, returning False to close."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.connections = 0
        self.dropped = 0  # connections the client aborted under the server's feet
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        http1.close_pools()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(v for k, v in _header_lines(head) if k == b"content-length"))
                self.requests.append(head + await reader.readexactly(length))
                if not await self.respond(reader, writer):
                    break
        except asyncio.IncompleteReadError:
            pass
        except ConnectionError:
            self.dropped += 1
        finally:
            writer.close()


def _header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines if line)]


async def post(url: str, body: bytes = b"{}") -> http1.Response:
    return await http1.post(
        url, headers={"Content-Type": "application/json"}, body=body, timeouts=TIMEOUTS, max_connections=10
    )


def content_length_reply(text: bytes):
    async def respond(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
        await writer.drain()
        return True

    return respond


def test_connections_are_kept_alive_and_reused():
    async def scenario():
        async with Server(content_length_reply(b"hello")) as server:
            bodies = []
            for _ in range(3):
                response = await post(server.url)
                bodies.append(await response.read())
                response.release()
            return bodies, server.connections, server.requests

    bodies, connections, requests = run_async(scenario())
    assert bodies == [b"hello"] * 3
    assert connections == 1
    assert requests[0].startswith(b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 2\r\n\r\n{}" in requests[0]


def test_an_idle_connection_the_server_dropped_is_replaced_without_an_error():
    async def respond_then_hang_up(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False  # the server closes the connection the client keeps in its pool

    async def scenario():
        async with Server(respond_then_hang_up) as server:
            first = await post(server.url)
            await first.read()
            first.release()
            await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
            second = await post(server.url)
            body = await second.read()
            second.release()
            return body, server.connections

    assert run_async(scenario()) == (b"ok", 2)


def test_a_reused_connection_closed_before_any_answer_is_replaced_once_at_once():
    answered = []

    async def hang_up_on_the_second_request(reader, writer) -> bool:
        if len(answered) == 1 and writer.get_extra_info("peername") == answered[0]:
            return False  # the idle-timeout race: the server closes as the request arrives
        answered.append(writer.get_extra_info("peername"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async def scenario():
        async with Server(hang_up_on_the_second_request) as server:
            bodies = []
            for _ in range(2):
                response = await post(server.url)
                bodies.append(await response.read())
                response.release()
            return bodies, server.connections, len(server.requests)

    assert run_async(scenario()) == ([b"ok", b"ok"], 2, 3)


def test_a_body_without_length_ends_when_the_server_closes():
    async def close_delimited(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        return False

    async def scenario():
        async with Server(close_delimited) as server:
            response = await post(server.url)
            return response.status, await response.read()

    assert run_async(scenario()) == (200, b"all of it")


def test_a_chunked_stream_arrives_as_sent_and_a_finished_stream_keeps_its_connection():
    gate = asyncio.Event()

    async def chunked(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\n[DONE]\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the end marker comes after the caller already has what it needs
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        gate.clear()
        return True

    async def scenario():
        async with Server(chunked) as server:
            seen = []
            for _ in range(2):
                response = await post(server.url)
                chunks = response.chunks()
                seen.append(await anext(chunks))  # before the server sends the rest
                gate.set()
                seen.append(await anext(chunks))
                response.release(finished=True)
                await asyncio.sleep(0.1)  # the end marker arrives; the connection goes back to the pool
            return seen, server.connections

    seen, connections = run_async(scenario())
    assert seen == [b"first", b"[DONE]"] * 2
    assert connections == 1


def test_an_abandoned_stream_aborts_its_connection():
    async def endless(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"4\r\ndata\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async def scenario():
        async with Server(endless) as server:
            response = await post(server.url)
            await anext(response.chunks())
            response.release()  # the client went away
            await asyncio.sleep(0.2)
            return server.dropped

    assert run_async(scenario()) == 1  # the upstream's next write failed: it knows to stop


def test_a_reader_that_falls_behind_pauses_the_upstream_instead_of_buffering():
    megabyte = b"x" * (1024 * 1024)

    async def flood(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * len(megabyte)))
        for _ in range(8):
            writer.write(megabyte)
            await writer.drain()
        return True

    async def scenario():
        async with Server(flood) as server:
            response = await post(server.url)
            await asyncio.sleep(0.3)  # nobody reads
            connection = response._connection
            held_while_paused = (connection.paused, connection.buffered)
            body = await response.read()
            response.release()
            return held_while_paused, len(body)

    (paused, buffered), size = run_async(scenario())
    assert paused and buffered < 2 * 1024 * 1024
    assert size == 8 * 1024 * 1024


@pytest.mark.parametrize("value", ["sk-or-v1-abc\r\nX-Evil: 1", "a\nb", "nul\0"])
def test_a_header_that_could_smuggle_another_request_is_refused(value):
    async def scenario():
        async with Server(content_length_reply(b"never")) as server:
            with pytest.raises(ValueError):
                await http1.post(
                    server.url, headers={"Authorization": value}, body=b"{}", timeouts=TIMEOUTS, max_connections=10
                )
            return server.requests

    assert run_async(scenario()) == []


def test_a_stall_between_chunks_is_a_timeout_even_when_the_first_byte_may_take_longer():
    async def stall(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async def scenario():
        timeouts = http1.Timeouts(connect=2, first_byte=30, between_chunks=0.2)
        async with Server(stall) as server:
            response = await http1.post(server.url, headers={}, body=b"{}", timeouts=timeouts, max_connections=10)
            with pytest.raises(http1.UpstreamTimeout) as raised:
                await response.read()
            response.release()
            return raised.value.before_headers

    assert run_async(scenario()) is False
