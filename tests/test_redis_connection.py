"""writingmate.redis_connection: every Redis user goes through redis-py, configured from REDIS_URL."""

from __future__ import annotations

import socket
import time

import pytest
import redis.exceptions
from django.conf import settings

from billing.quotas import counters as quota_counters
from tests.support import run_async as run
from writingmate.redis_connection import async_redis, celery_redis_url


def test_no_redis_url_means_no_client(settings):
    settings.REDIS_URL = ""

    async def scenario():
        return async_redis()

    assert run(scenario()) is None


@pytest.mark.redis
def test_a_batch_of_script_runs_goes_out_in_one_write_and_loads_the_script_when_redis_lost_it():
    async def scenario():
        client = async_redis()
        await client.script_flush()
        script = client.register_script("return ARGV[1] * 2")
        doubled = await quota_counters.run_in_one_write(client, script, [([], [n]) for n in range(5)])
        known = await client.script_exists(script.sha)
        return doubled, known

    assert run(scenario()) == ([0, 2, 4, 6, 8], [True])


@pytest.mark.redis
def test_an_error_reply_in_a_batch_reaches_the_caller():
    async def scenario():
        client = async_redis()
        await client.set("wm:test:string", "1")
        script = client.register_script("return redis.call('LPUSH', KEYS[1], 'x')")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await quota_counters.run_in_one_write(client, script, [(["wm:test:string"], [])])

    run(scenario())


def test_an_unreachable_server_fails_fast_instead_of_hanging(settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"

    async def scenario():
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            await async_redis().ping()
        return time.monotonic() - started

    assert run(scenario()) < 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
        ("rediss://u:p@cache:6380/3", "rediss://u:p@cache:6380/3?ssl_cert_reqs=required"),
        (
            "rediss://cache:6380/0?ssl_ca_certs=%2Fetc%2Fca.pem&ssl_cert_reqs=none",
            "rediss://cache:6380/0?ssl_ca_certs=%2Fetc%2Fca.pem&ssl_cert_reqs=none",
        ),
    ],
)
def test_celery_gets_a_tls_url_that_spells_out_verification(url, expected):
    assert celery_redis_url(url) == expected


def test_settings_read_the_redis_url_once_for_everyone():
    assert settings.CELERY_BROKER_URL in (celery_redis_url(settings.REDIS_URL), "memory://")
