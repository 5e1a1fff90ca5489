"""writingmate.fast_redis: the pipelined client on the /v1 hot path."""

from __future__ import annotations

import asyncio
import socket

import pytest
from django.conf import settings

from writingmate.fast_redis import FastRedis, RedisReplyError, RedisUnavailable, _Incomplete, _parse


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":42\r\n", 42),
        (b"$3\r\nabc\r\n", b"abc"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", [b"a", [1]]),
        (b"*-1\r\n", None),
    ],
)
def test_replies_parse(wire, value):
    assert _parse(wire, 0) == (value, len(wire))


@pytest.mark.parametrize("wire", [b"$3\r\nab", b"*2\r\n$1\r\na\r\n", b":4"])
def test_a_partial_reply_waits_for_more(wire):
    with pytest.raises(_Incomplete):
        _parse(wire, 0)


def test_an_error_reply_is_a_value_not_a_crash():
    error, end = _parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(error, RedisReplyError) and "NOSCRIPT" in str(error) and end == 30


@pytest.mark.redis
def test_commands_pipeline_in_order_and_errors_reach_their_caller():
    async def scenario():
        client = FastRedis(settings.REDIS_URL, timeout_seconds=1)
        assert await client.set("fast:a", b"1") is True
        assert await client.set("fast:a", b"2", nx=True) is False
        echoes = await asyncio.gather(*(client.execute("ECHO", str(i)) for i in range(500)))
        with pytest.raises(RedisReplyError):
            await client.execute("LPUSH", "fast:a", "x")  # WRONGTYPE: fast:a holds a string
        assert await client.mget("fast:a", "fast:missing") == [b"1", None]
        await client.close()
        return echoes

    assert run(scenario()) == [str(i).encode() for i in range(500)]


@pytest.mark.redis
def test_a_reply_that_never_comes_closes_the_connection_and_the_next_command_reconnects():
    async def scenario():
        client = FastRedis(settings.REDIS_URL, timeout_seconds=0.2)
        with pytest.raises(RedisUnavailable):
            await client.execute("BLPOP", "fast:never", "2")
        assert await client.execute("PING") == "PONG"
        await client.close()

    run(scenario())


def test_an_unreachable_server_is_unavailable_not_a_hang():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        client = FastRedis(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.5)
        with pytest.raises(RedisUnavailable):
            await client.execute("PING")

    run(scenario())


@pytest.mark.redis
def test_a_script_loads_itself_on_first_use_and_then_runs_by_sha():
    async def scenario():
        client = FastRedis(settings.REDIS_URL, timeout_seconds=1)
        await client.execute("SCRIPT", "FLUSH")
        script = client.register_script("return {KEYS[1], ARGV[1] + 1}")
        first = await script(keys=["fast:k"], args=[41])
        second = await script(keys=["fast:k"], args=[1])
        known = await client.execute("SCRIPT", "EXISTS", script.sha)
        await client.close()
        return first, second, known

    assert run(scenario()) == ([b"fast:k", 42], [b"fast:k", 2], [1])


@pytest.mark.redis
def test_a_batch_of_script_runs_goes_out_in_one_write_and_loads_the_script_once_if_needed():
    async def scenario():
        client = FastRedis(settings.REDIS_URL, timeout_seconds=1)
        await client.execute("SCRIPT", "FLUSH")
        script = client.register_script("return ARGV[1] * 2")
        doubled = await script.many([([], [n]) for n in range(5)])
        replies = await client.execute_many([("SET", "fast:b", "1"), ("LPUSH", "fast:b", "x"), ("GET", "fast:b")])
        await client.close()
        return doubled, replies

    doubled, (ok, wrongtype, value) = run(scenario())
    assert doubled == [0, 2, 4, 6, 8]
    assert ok == "OK" and isinstance(wrongtype, RedisReplyError) and value == b"1"
