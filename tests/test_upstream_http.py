"""The upstream HTTP client (gateway.providers.http, one pooled aiohttp session) against small loopback
servers that misbehave on purpose: keep-alive, connections dropped with and without the body read,
every way a body can end, backpressure, header caps, IPv6, TLS and a proxy from the environment.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from gateway.providers import http
from gateway.providers.base import ProviderError, UpstreamResponse
from tests.support import run_async
from tests.tls_support import make_server_certificate


class Server:
    """A loopback server; `respond(reader, writer)` answers one request, returning False to close."""

    def __init__(self, respond, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.host = host
        self.tls = tls
        self.connections = 0
        self.dropped = 0  # connections the client aborted under the server's feet
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self.url = f"{self.origin}/v1/chat"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await http.close_upstream_session()

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


async def post(url: str, *, stream: bool = False, headers: dict[str, str] | None = None) -> UpstreamResponse:
    return await http.post(url, headers=headers or {"Content-Type": "application/json"}, data=b"{}", stream=stream)


async def read_all(response: UpstreamResponse) -> bytes:
    body = b"".join([chunk async for chunk in response.chunks]) if response.chunks else response.body
    await response.close(finished=True)
    return body


def reply(text: bytes, *, extra: bytes = b""):
    async def respond(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(text), text))
        await writer.drain()
        return True

    return respond


def test_connections_are_kept_alive_and_reused():
    async def scenario():
        async with Server(reply(b"hello")) as server:
            bodies = [(await post(server.url)).body for _ in range(3)]
            return bodies, server.connections, server.requests

    bodies, connections, requests = run_async(scenario())
    assert bodies == [b"hello"] * 3
    assert connections == 1
    assert requests[0].startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in requests[0] and requests[0].endswith(b"\r\n\r\n{}")


def test_an_idle_connection_the_server_closed_is_not_reused():
    async def respond_then_hang_up(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False  # the server closes the connection the client keeps in its pool

    async def scenario():
        async with Server(respond_then_hang_up) as server:
            first = (await post(server.url)).body
            await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
            second = (await post(server.url)).body
            return first, second, server.connections

    assert run_async(scenario()) == (b"ok", b"ok", 2)


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
def test_a_body_the_upstream_read_before_dropping_the_connection_is_never_sent_again(reused):
    """Issue #10 point 2, at the client: the upstream may have started generating; a resend runs it twice."""
    answered = []

    async def read_then_drop(reader, writer) -> bool:
        if reused and not answered:
            answered.append(True)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return True
        return False  # the body is read (Server did), then the connection closes with no answer

    async def scenario():
        async with Server(read_then_drop) as server:
            if reused:
                await post(server.url)
            with pytest.raises(ProviderError) as raised:
                await post(server.url)
            return raised.value, len(server.requests) - len(answered)

    error, bodies_after = run_async(scenario())
    assert bodies_after == 1
    assert (error.status, error.retryable, error.code) == (502, False, "upstream_error")


def test_a_refused_connection_is_the_only_failure_that_may_be_retried():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        with pytest.raises(ProviderError) as raised:
            await post(f"http://127.0.0.1:{port}/v1/chat")
        await http.close_upstream_session()
        return raised.value

    error = run_async(scenario())
    assert (error.status, error.retryable) == (502, True)


def test_a_body_without_length_ends_when_the_server_closes():
    async def close_delimited(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        return False

    async def scenario():
        async with Server(close_delimited) as server:
            response = await post(server.url)
            return response.status, response.body

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
                response = await post(server.url, stream=True)
                seen.append(await anext(response.chunks))  # before the server sends the rest
                gate.set()
                seen.append(await anext(response.chunks))
                await response.close(finished=True)
                await asyncio.sleep(0.2)  # the end marker arrives; the connection goes back to the pool
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
            response = await post(server.url, stream=True)
            await anext(response.chunks)
            await response.close(finished=False)  # the client went away
            for _ in range(100):
                if server.dropped:
                    break
                await asyncio.sleep(0.02)
            return server.dropped

    assert run_async(scenario()) == 1  # the upstream's next write failed: it knows to stop


def test_a_reader_that_falls_behind_pauses_the_upstream_instead_of_buffering():
    megabyte = b"x" * (1024 * 1024)
    sent = []

    async def flood(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (16 * len(megabyte)))
        for _ in range(16):
            writer.write(megabyte)
            await writer.drain()
            sent.append(len(megabyte))
        return True

    async def scenario():
        async with Server(flood) as server:
            response = await post(server.url, stream=True)
            await asyncio.sleep(0.5)  # nobody reads
            sent_while_paused = sum(sent)
            body = await read_all(response)
            return sent_while_paused, len(body)

    sent_while_paused, size = run_async(scenario())
    # Socket buffers on both ends hold a few MB at most; the rest waits for the reader.
    assert sent_while_paused < 12 * 1024 * 1024
    assert size == 16 * 1024 * 1024


@pytest.mark.parametrize("value", ["sk-or-v1-abc\r\nX-Evil: 1", "a\nb"])
def test_a_header_that_could_smuggle_another_request_is_refused(value):
    async def scenario():
        async with Server(reply(b"never")) as server:
            with pytest.raises(ProviderError) as raised:
                await post(server.url, headers={"Authorization": value})
            return raised.value.code, server.requests

    assert run_async(scenario()) == ("upstream_request_invalid", [])


def test_a_stall_between_chunks_is_a_timeout_even_when_the_first_byte_may_take_longer(settings):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS = 30
    settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS = 0.2

    async def stall(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async def scenario():
        async with Server(stall) as server:
            response = await post(server.url, stream=True)
            with pytest.raises(ProviderError) as raised:
                await read_all(response)
            return raised.value.status, raised.value.code

    assert run_async(scenario()) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    "extra",
    [
        b"".join(b"X-Many-%d: 1\r\n" % n for n in range(http.MAX_RESPONSE_HEADERS + 1)),
        b"X-Long: " + b"a" * (http.MAX_RESPONSE_HEADER_LINE_BYTES + 1) + b"\r\n",
    ],
    ids=["too-many-headers", "a-header-too-long"],
)
def test_response_headers_are_capped_in_number_and_size(extra):
    async def scenario():
        async with Server(reply(b"{}", extra=extra)) as server:
            with pytest.raises(ProviderError) as raised:
                await post(server.url)
            return raised.value.status, raised.value.retryable

    assert run_async(scenario()) == (502, False)


def test_headers_under_the_caps_pass():
    extra = b"".join(b"X-Many-%d: 1\r\n" % n for n in range(50)) + b"X-Long: " + b"a" * 4000 + b"\r\n"

    async def scenario():
        async with Server(reply(b"{}", extra=extra)) as server:
            response = await post(server.url)
            return response.status, response.headers["x-long"]

    status, long_value = run_async(scenario())
    assert status == 200 and long_value == "a" * 4000


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_upstream_is_reached_and_its_host_header_keeps_the_brackets():
    async def scenario():
        async with Server(reply(b"six"), host="::1") as server:
            response = await post(server.url)
            return response.body, server.requests[0], server.origin

    body, request, origin = run_async(scenario())
    assert body == b"six"
    assert f"\r\nHost: {origin.removeprefix('http://')}\r\n".encode() in request
    assert b"Host: [::1]:" in request


@pytest.fixture
def certificate(tmp_path):
    return make_server_certificate(tmp_path)


def _server_tls(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_file, certificate.key_file)
    return context


def test_tls_is_verified_against_the_configured_ca(settings, certificate):
    settings.UPSTREAM_CA_FILE = str(certificate.ca_file)

    async def scenario():
        async with Server(reply(b"secure"), tls=_server_tls(certificate)) as server:
            return (await post(server.url)).body

    assert run_async(scenario()) == b"secure"


def test_a_certificate_the_system_cas_do_not_trust_is_refused_before_anything_is_sent(settings, certificate):
    settings.UPSTREAM_CA_FILE = ""  # the system CAs, as in production

    async def scenario():
        async with Server(reply(b"never"), tls=_server_tls(certificate)) as server:
            with pytest.raises(ProviderError) as raised:
                await post(server.url)
            return raised.value, server.requests

    error, requests = run_async(scenario())
    assert error.status == 502 and "Certificate" in error.message and requests == []


def test_the_proxy_comes_from_the_environment(monkeypatch):
    """HTTP_PROXY names the proxy; the request goes to it in absolute form, as proxies expect."""

    async def scenario():
        async with Server(reply(b"via proxy")) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.origin)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            http.forget_proxies()
            try:
                response = await post("http://upstream.invalid:9/api/v1/chat/completions")
            finally:
                monkeypatch.delenv("HTTP_PROXY")
                http.forget_proxies()
            return response.body, proxy.requests[0]

    body, request = run_async(scenario())
    assert body == b"via proxy"
    assert request.startswith(b"POST http://upstream.invalid:9/api/v1/chat/completions HTTP/1.1\r\n")


def test_no_proxy_is_honoured(monkeypatch):
    async def scenario():
        async with Server(reply(b"direct")) as server:
            monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            http.forget_proxies()
            try:
                return (await post(server.url)).body
            finally:
                http.forget_proxies()

    assert run_async(scenario()) == b"direct"
