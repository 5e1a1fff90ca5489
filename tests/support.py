"""Helpers the tests share: resetting per-process state, users with keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError

from accounts import access
from accounts.models import Plan, User
from apikeys import authentication, throttling
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key
from billing.models import Refusal, UsageEvent
from billing.refusals import reset_refusal_buffer
from gateway import catalogue
from gateway.surfaces.anthropic import models as anthropic_models
from writingmate.redis_connection import close_async_redis, sync_redis

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float = 5.0, message: str = "") -> T:
    """Poll `condition` until it returns something truthy (and return that), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message or f"still not true after {timeout}s: {condition}"
        time.sleep(0.01)


def move_key_clock_forward(monkeypatch, seconds: float) -> None:
    """The clock key expiry is checked against runs `seconds` ahead: an expiry passes without waiting for it."""
    real_time = time.time
    clock = SimpleNamespace(time=lambda: real_time() + seconds, monotonic=time.monotonic)
    monkeypatch.setattr(authentication, "time", clock)


def wait_for_idle_server(timeout: float = 10.0) -> None:
    """Every request the in-process server took is done, its finalizers (ledger, refusals) included.

    After this, a request that was refused before the upstream can no longer record anything.
    """
    from writingmate.asgi import application

    wait_until(lambda: application.api_handler.in_flight == 0, timeout=timeout, message="the server stayed busy")


def run_async(coro):
    """Run `coro` in a fresh event loop, closing that loop's Redis clients before it ends."""

    async def main():
        try:
            return await coro
        finally:
            await close_async_redis()

    return asyncio.run(main())


def reset_process_state() -> None:
    """Forget every cache a previous test may have filled: local grants, catalogue, test Redis."""
    authentication.forget_cached_grants()
    # The live server shares this process: its blocked addresses and sign-in counters would carry over.
    throttling.forget_blocked_addresses()
    reset_refusal_buffer()
    cache.clear()
    access.bump_access_epoch()
    catalogue.forget_catalogue()
    anthropic_models.forget_aliases()
    if settings.REDIS_URL:
        client = sync_redis()
        try:
            client.flushdb()
        except Exception:
            pass


@dataclass
class KeyedUser:
    user: User
    key: str

    @property
    def workspace(self):
        return self.user.current_workspace


def make_user(
    email: str = "dev@example.com", *, plan: str = "unlimited", password: str = "a-long-password-1"
) -> KeyedUser:
    user = User.objects.create_user(email, password)
    workspace = user.current_workspace
    workspace.plan = Plan.objects.get(slug=plan)
    workspace.save(update_fields=["plan"])
    access.bump_access_epoch()
    return KeyedUser(user=user, key=create_api_key(user=user, name="test").plaintext)


def wait_for_usage_events(count: int, timeout: float = 5.0, *, workspace_id: int | None = None) -> list:
    """The ledger is written after the response is sent: wait for `count` request lines (of a workspace)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = UsageEvent.objects.filter(kind=UsageEvent.Kind.REQUEST)
            if workspace_id is not None:
                lines = lines.filter(workspace_id=workspace_id)
            events = list(lines.order_by("id"))
        except OperationalError:
            # SQLite's shared-cache test database: the server's writer may hold the table right now.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if len(events) >= count or time.monotonic() > deadline:
            assert len(events) == count, f"expected {count} usage events, found {len(events)}"
            return events
        time.sleep(0.02)


def record_limit_refusals(
    key: DeveloperKey, *, workspace, day: dt.date, at: dt.datetime, count: int, group: str
) -> Refusal:
    """`count` requests of `key` refused at its daily limit in the minute of `at`, as the refusal writer
    records them."""
    return Refusal.objects.create(
        minute=at.replace(second=0, microsecond=0),
        day=day,
        status=429,
        code="daily_limit_exceeded",
        endpoint="chat.completions",
        key=key,
        key_prefix=key.prefix,
        user=key.user,
        workspace=workspace,
        model="openai/gpt-5-mini",
        address="10.0.0.7",
        count=count,
        first_at=at,
        last_at=at,
        group=group,
    )
