"""Managed Redis: every Redis use works over `rediss://` with an ACL user, a password and a db number.

A TLS-only `redis-server` (Debian's build speaks TLS) is started per test with certificates made in
the test; a gateway process is pointed at it by REDIS_URL alone, and this process too (it revokes keys).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import redis.exceptions
import requests
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone

from accounts.models import Plan
from apikeys.models import DeveloperKey
from apikeys.services import revoke_api_key
from billing import ledger
from billing.recording import UsageRecord
from tests.fault_support import assert_openai_error, chat, gateway_env, running_gateway, settle_ledger
from tests.support import make_user
from tests.support import run_async as run
from tests.tls_support import make_server_certificate
from writingmate.celery import app as celery_app
from writingmate.redis_connection import async_redis, celery_redis_url, forget_sync_redis, sync_redis

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)"
    ),
]

USER, PASSWORD, DB = "writingmate", "s3cret pass/word", 3


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path

    def url(self, *, password: str = PASSWORD, extra: str = "") -> str:
        query = f"ssl_ca_certs={quote(str(self.ca_file), safe='')}{extra}"
        return f"rediss://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{DB}?{query}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[TlsRedis]:
    certificate = make_server_certificate(tmp_path / "certs")
    port = _free_port()
    options = {
        "port": ["0"],  # no plain-text port at all
        "tls-port": [str(port)],
        "bind": ["127.0.0.1"],
        "tls-cert-file": [str(certificate.cert_file)],
        "tls-key-file": [str(certificate.key_file)],
        "tls-ca-cert-file": [str(certificate.ca_file)],
        "tls-auth-clients": ["no"],
        "save": [""],
        "appendonly": ["no"],
        "dir": [str(tmp_path)],
    }
    argv = ["redis-server", *(part for name, values in options.items() for part in (f"--{name}", *values))]
    # The default user is off: only the ACL user with its password gets in.
    argv += ["--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = TlsRedis(port=port, ca_file=certificate.ca_file)
    deadline = time.monotonic() + 10
    while True:
        try:
            server.admin().ping()
            break
        except redis.exceptions.ConnectionError:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def on_tls_redis(tls_redis, settings) -> Iterator[TlsRedis]:
    """This process uses the TLS Redis too (key revocation bumps the access epoch there)."""
    settings.REDIS_URL = tls_redis.url()
    forget_sync_redis()
    try:
        yield tls_redis
    finally:
        forget_sync_redis()


def test_plain_text_and_unverified_connections_are_refused(tls_redis):
    plain = redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    # Verification is on by default: without the CA file the server's certificate is not trusted.
    untrusted = tls_redis.url().split("?")[0]
    with pytest.raises(redis.exceptions.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        redis.Redis.from_url(untrusted, socket_timeout=2).ping()
    # ...unless the URL says otherwise, as redis-py reads it.
    assert redis.Redis.from_url(f"{untrusted}?ssl_cert_reqs=none", socket_timeout=2).ping()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_chat_limits_and_revocation_run_through_tls_redis(on_tls_redis, fake_upstream):
    Plan.objects.create(slug="tls2", name="TLS 2", daily_message_limit=2, allowed_model_tiers=["basic"])
    limited = make_user("tls-limited@example.com", plan="tls2")
    revoked = make_user("tls-revoked@example.com")

    with running_gateway(gateway_env(redis_url=on_tls_redis.url())) as gateway:
        assert gateway.ready().json()["checks"]["redis"] == "ok"

        # Chat completions, whole and streamed, admitted by the quota script on the TLS Redis.
        assert gateway.chat(limited.key).status_code == 200
        stream = requests.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat(stream=True),
            headers={"Authorization": f"Bearer {limited.key}"},
            timeout=30,
        )
        assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
        # The plan's limit of 2 holds.
        assert_openai_error(gateway.chat(limited.key), status=429, code="daily_limit_exceeded")

        # Revocation: the grant is cached in the TLS Redis; revoking bumps the epoch there.
        assert gateway.chat(revoked.key).status_code == 200
        revoke_api_key(key=DeveloperKey.objects.get(user=revoked.user))
        assert_openai_error(gateway.chat(revoked.key), status=401, code="invalid_api_key")

        settle_ledger(3)

    admin = on_tls_redis.admin()
    assert admin.keys("wm:grant:*") and admin.keys("wm:quota:*") and int(admin.get("wm:access-epoch")) > 0
    assert admin.connection_pool.connection_kwargs["db"] == DB


def test_the_cache_spool_throttles_and_celery_work_over_tls(on_tls_redis):
    url = on_tls_redis.url()

    cache = RedisCache(url, {})
    cache.set("wm:tls-cache", "cached", 30)
    assert cache.get("wm:tls-cache") == "cached"

    entry = ledger.LedgerEntry(
        usage=UsageRecord(
            request_id="req_tls",
            workspace_id=1,
            user_id=1,
            key_id=None,
            model="m",
            endpoint="chat.completions",
            prompt_tokens=1,
            completion_tokens=1,
            cached_tokens=0,
            byok=False,
            status="succeeded",
            latency_ms=1,
        ),
        day=dt.date.today(),
        counted_messages=1,
        created_at=timezone.now(),
    )
    assert ledger.spool_ledger_entries(entries=[entry])
    assert sync_redis().llen(ledger.LEDGER_SPOOL_KEY) == 1

    async def count_bad_keys() -> int:
        from apikeys import throttling

        await throttling.note_invalid_key("198.51.100.7")
        keys = await async_redis().keys("wm:badkey:*")
        return len(keys)

    assert run(count_bad_keys()) == 1

    # Celery's broker (kombu) and its Redis result backend read the same URL.
    with celery_app.connection_for_write(celery_redis_url(url)) as connection:
        with connection.SimpleQueue("wm-tls-test") as queue:
            queue.put({"hello": "tls"})
            message = queue.get(timeout=5)
            message.ack()
            assert message.payload == {"hello": "tls"}
    from celery.backends.redis import RedisBackend

    backend = RedisBackend(app=celery_app, url=celery_redis_url(url))
    backend.set("wm-tls-result", "done")
    assert backend.get("wm-tls-result") == b"done"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_wrong_password_leaks_no_connections(tls_redis, settings):
    admin = tls_redis.admin()
    connected_before = admin.info("clients")["connected_clients"]
    descriptors_before = _open_descriptors()
    settings.REDIS_URL = tls_redis.url(password="wrong")
    forget_sync_redis()

    async def fail_many_times() -> int:
        failures = 0
        for _ in range(25):
            try:
                await async_redis().ping()
            except redis.exceptions.AuthenticationError:
                failures += 1
        return failures

    try:
        assert run(fail_many_times()) == 25
        for _ in range(25):
            with pytest.raises(redis.exceptions.AuthenticationError):
                sync_redis().ping()
    finally:
        forget_sync_redis()

    assert admin.info("clients")["connected_clients"] <= connected_before
    assert _open_descriptors() <= descriptors_before + 2
