"""Which limits apply to a request (scopes over counters), and what a budget or a refusal says about them.

A counter is a range of billing days of one workspace (or one member of it, or one developer key); a
scope is a limit on a counter. Both are pure values, remembered per workspace snapshot, user, key and day.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from accounts.access import WorkspaceAccess
from billing.quotas.periods import day_start, format_duration, month_bounds

DAILY_LIMIT = "daily_limit_exceeded"
MEMBER_DAILY_LIMIT = "member_daily_limit_exceeded"
APPSUMO_DAILY_LIMIT = "appsumo_daily_limit_exceeded"
APPSUMO_MONTHLY_LIMIT = "appsumo_monthly_limit_exceeded"
KEY_DAILY_LIMIT = "key_daily_limit_reached"

_BYOK_NOTE = "Requests made with your own OpenRouter key (BYOK) do not count against it."

_KEY_PREFIX = "wm:quota:"
# Counters outlive their period a little so that late settles of a period's last requests land.
_COUNTER_GRACE_SECONDS = 6 * 3600


class QuotaExceeded(Exception):
    """A limit has no room left for one more message. Render as a 429 that tells when it resets."""

    def __init__(self, *, message: str, code: str, limit: int, reset_at: dt.datetime, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.limit = limit
        self.reset_at = reset_at
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {
            "retry-after": str(self.retry_after_seconds),
            "x-should-retry": "false",
            "x-ratelimit-limit-messages": str(self.limit),
            "x-ratelimit-remaining-messages": "0",
            "x-ratelimit-reset-messages": format_duration(self.retry_after_seconds),
        }


@dataclass(frozen=True)
class Budget:
    """The tightest limit that applies to a caller; `limit` and `remaining` are None when unlimited."""

    limit: int | None
    remaining: int | None
    reset_at: dt.datetime

    def headers(self) -> dict[str, str]:
        """x-ratelimit-*-messages, the reset in OpenAI's duration style ("3h2m5s")."""
        reset_seconds = max(0, int((self.reset_at - timezone.now()).total_seconds() + 0.999))
        headers = {"x-ratelimit-reset-messages": format_duration(reset_seconds)}
        if self.limit is not None and self.remaining is not None:
            headers["x-ratelimit-limit-messages"] = str(self.limit)
            headers["x-ratelimit-remaining-messages"] = str(self.remaining)
        return headers


@dataclass(frozen=True)
class Counter:
    """One quota counter: a workspace's (or a member's, or a key's) messages over a range of billing days.

    A key's counter spans every workspace the key is used in (`workspace_id` None).
    """

    key: str
    workspace_id: int | None
    user_id: int | None
    first_day: dt.date
    last_day: dt.date
    reset_at: dt.datetime
    key_id: int | None = None

    @property
    def expire_at_ms(self) -> int:
        return int((self.reset_at.timestamp() + _COUNTER_GRACE_SECONDS) * 1000)

    @property
    def redis_keys(self) -> tuple[str, str]:
        return (_KEY_PREFIX + self.key, _KEY_PREFIX + self.key + ":inflight")


@dataclass(frozen=True)
class Scope:
    """A limit applied to a counter (two limits can share one counter: plan and licence daily)."""

    code: str
    description: str
    limit: int
    counter: Counter
    note: str = _BYOK_NOTE  # the refusal's last sentence


@dataclass(frozen=True)
class KeyBudget:
    """A developer key's own daily message budget; `version` changes whenever its owner changes it."""

    key_id: int
    prefix: str
    daily_message_limit: int
    version: int = 0


def counters_for(*, workspace_id: int, user_id: int, day: dt.date) -> tuple[Counter, Counter, Counter]:
    """The workspace-day, member-day and workspace-month counters a request on `day` feeds."""
    return _counters(workspace_id, user_id, day, settings.BILLING_DAY_TIMEZONE)


@functools.lru_cache(maxsize=8192)
def _counters(workspace_id: int, user_id: int, day: dt.date, _timezone: str) -> tuple[Counter, Counter, Counter]:
    # Pure, and asked for on every request: the time-zone arithmetic is worth remembering.
    next_day = day_start(day + dt.timedelta(days=1))
    first, last = month_bounds(day)
    return (
        Counter(f"ws:{workspace_id}:d:{day.isoformat()}", workspace_id, None, day, day, next_day),
        Counter(f"wsu:{workspace_id}:{user_id}:d:{day.isoformat()}", workspace_id, user_id, day, day, next_day),
        Counter(
            f"ws:{workspace_id}:m:{first:%Y-%m}",
            workspace_id,
            None,
            first,
            last,
            day_start(last + dt.timedelta(days=1)),
        ),
    )


def key_counter_for(*, key_id: int, version: int, day: dt.date) -> Counter:
    """The counter of a key's budget on `day`; a new `version` (the budget set anew) is a new counter,
    rebuilt from the ledger, so messages settled while the key had no budget are never missed."""
    return _key_counter(key_id, version, day, settings.BILLING_DAY_TIMEZONE)


@functools.lru_cache(maxsize=8192)
def _key_counter(key_id: int, version: int, day: dt.date, _timezone: str) -> Counter:
    next_day = day_start(day + dt.timedelta(days=1))
    return Counter(f"key:{key_id}:v{version}:d:{day.isoformat()}", None, None, day, day, next_day, key_id)


def scopes_for(
    *, workspace: WorkspaceAccess, user_id: int, day: dt.date, key: KeyBudget | None = None
) -> tuple[Scope, ...]:
    """Every limit that applies to a request by `user_id` in `workspace` on `day` with the developer key
    whose budget is `key` (remembered: it is pure)."""
    return _scopes(workspace, user_id, day, settings.BILLING_DAY_TIMEZONE, key)


@functools.lru_cache(maxsize=8192)
def _scopes(
    workspace: WorkspaceAccess, user_id: int, day: dt.date, _timezone: str, key: KeyBudget | None
) -> tuple[Scope, ...]:
    workspace_day, member_day, workspace_month = counters_for(
        workspace_id=workspace.workspace_id, user_id=user_id, day=day
    )
    plan = f"the {workspace.plan_name} plan"
    licence = f"your AppSumo licence ({workspace.licence_tier})"
    scopes = []
    if workspace.daily_message_limit is not None:
        scopes.append(
            Scope(DAILY_LIMIT, f"workspace daily message limit of {plan}", workspace.daily_message_limit, workspace_day)
        )
    if workspace.member_daily_message_limit is not None:
        scopes.append(
            Scope(
                MEMBER_DAILY_LIMIT,
                f"daily message limit per member of {plan}",
                workspace.member_daily_message_limit,
                member_day,
            )
        )
    if workspace.licence_daily_message_limit is not None:
        scopes.append(
            Scope(
                APPSUMO_DAILY_LIMIT,
                f"daily message limit of {licence}",
                workspace.licence_daily_message_limit,
                workspace_day,
            )
        )
    if workspace.licence_monthly_message_limit is not None:
        scopes.append(
            Scope(
                APPSUMO_MONTHLY_LIMIT,
                f"monthly message limit of {licence}",
                workspace.licence_monthly_message_limit,
                workspace_month,
            )
        )
    if key is not None:
        scopes.append(
            Scope(
                KEY_DAILY_LIMIT,
                f"daily message budget of the developer key {key.prefix}…",
                key.daily_message_limit,
                key_counter_for(key_id=key.key_id, version=key.version, day=day),
                "The key's owner can raise or remove it in Settings → API Keys; the workspace's other keys "
                "are not affected. " + _BYOK_NOTE,
            )
        )
    return tuple(scopes)


def distinct_counters(scopes: Sequence[Scope]) -> list[Counter]:
    seen: dict[str, Counter] = {}
    for scope in scopes:
        seen.setdefault(scope.counter.key, scope.counter)
    return list(seen.values())


def budget_for(scopes: Sequence[Scope], figures: dict[str, tuple[int, int]], day: dt.date) -> Budget:
    if not scopes:
        return Budget(limit=None, remaining=None, reset_at=day_start(day + dt.timedelta(days=1)))
    tightest = min(
        scopes,
        key=lambda s: (max(0, s.limit - sum(figures[s.counter.key])), s.limit, -s.counter.reset_at.timestamp()),
    )
    remaining = max(0, tightest.limit - sum(figures[tightest.counter.key]))
    return Budget(limit=tightest.limit, remaining=remaining, reset_at=tightest.counter.reset_at)


def refusal_for(scopes: Sequence[Scope], figures: dict[str, tuple[int, int]]) -> QuotaExceeded:
    full = [s for s in scopes if sum(figures[s.counter.key]) + 1 > s.limit] or list(scopes)
    # The scope that reopens last is the one that decides when a retry can succeed.
    scope = max(full, key=lambda s: (s.counter.reset_at, -s.limit))
    now = timezone.now()
    retry_after = max(1, int((scope.counter.reset_at - now).total_seconds() + 0.999))
    used, inflight = figures[scope.counter.key]
    in_flight_note = f" ({inflight} of them in requests still running)" if inflight else ""
    message = (
        f"You have reached the {scope.description}: {scope.limit} messages, {used + inflight} used{in_flight_note}. "
        f"It resets at {scope.counter.reset_at.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {format_duration(retry_after)}). "
        f"{scope.note}"
    )
    return QuotaExceeded(
        message=message,
        code=scope.code,
        limit=scope.limit,
        reset_at=scope.counter.reset_at,
        retry_after_seconds=retry_after,
    )
