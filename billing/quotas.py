"""Daily, per-member and AppSumo message limits: atomic reserve and settle on the request path.

Fast path: one Lua script per reservation checks and reserves every scope that applies at once.
A counter is a Redis hash of settled messages per ledger line (`request:<id>`, `settlement:<id>`)
with a running `total`, plus a sorted set of in-flight request ids scored by their expiry. Settles
and rebuilds both use HSETNX per ledger line, so either can run first, twice, or concurrently and
the total stays exact; a counter Redis lost is rebuilt from the ledger. Without Redis (or while it
is unreachable) the same checks run in the database under a per-workspace lock, against the ledger
and a table of reservations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import threading
import time
import weakref
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, IntegerField, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from accounts.access import ACCESS_EPOCH_KEY, AccessChanged, WorkspaceAccess, confirm_access_epoch
from accounts.models import Workspace
from billing.models import QuotaReservation, UsageEvent
from writingmate.background import run_in_background
from writingmate.db import run_db
from writingmate.redis_connection import async_redis, sync_redis

logger = logging.getLogger(__name__)

DAILY_LIMIT = "daily_limit_exceeded"
MEMBER_DAILY_LIMIT = "member_daily_limit_exceeded"
APPSUMO_DAILY_LIMIT = "appsumo_daily_limit_exceeded"
APPSUMO_MONTHLY_LIMIT = "appsumo_monthly_limit_exceeded"

BACKEND_NONE = "none"
BACKEND_REDIS = "redis"
BACKEND_DATABASE = "database"

_KEY_PREFIX = "wm:quota:"
# Counters outlive their period a little so that late settles of a period's last requests land.
_COUNTER_GRACE_SECONDS = 6 * 3600
# Namespace of the PostgreSQL advisory locks taken per workspace on the database path.
_ADVISORY_LOCK_CLASS = 0x574D
_REBUILD_CHUNK = 500
_REDIS_ATTEMPTS = 3
_REDIS_RETRY_BUDGET_SECONDS = 2.0

# KEYS: (hash, in-flight zset) per counter, then the access epoch. ARGV: mode, request id, reservation
# ttl ms, reconcile interval ms, the access epoch the caller's grant was read at ('' when it was
# confirmed already), then (limit, expire-at ms) per counter.
# Returns {status, reconcile, used1, inflight1, used2, inflight2, ...}; status 0 admitted (or peeked),
# 1 refused, 2 some counter must first be rebuilt from the ledger (then the indexes follow), 3 the
# access epoch moved on (nothing was held).
_RESERVE_LUA = """
local n = (#KEYS - 1) / 2
if ARGV[5] ~= '' and (redis.call('GET', KEYS[#KEYS]) or '0') ~= ARGV[5] then return {3} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, rid = ARGV[1], ARGV[2]
local ttl, reconcile_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local missing = {}
for i = 1, n do
  if redis.call('HEXISTS', KEYS[2*i-1], 'ready') == 0 then missing[#missing+1] = i end
end
if #missing > 0 then return {2, unpack(missing)} end
local out = {0, 0}
local refused = false
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local limit = tonumber(ARGV[4 + 2*i])
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local vals = redis.call('HMGET', h, 'total', 'checked')
  local used = tonumber(vals[1] or '0')
  local inflight = redis.call('ZCARD', z)
  -- A retried reserve (its first reply lost) must not count its own earlier hold against itself.
  local mine = 0
  if redis.call('ZSCORE', z, rid) then mine = 1 end
  if used + inflight - mine + 1 > limit then refused = true end
  inflight = inflight - mine
  if now - tonumber(vals[2] or '0') > reconcile_ms then
    redis.call('HSET', h, 'checked', now)
    out[2] = 1
  end
  out[#out+1] = used
  out[#out+1] = inflight
end
if refused and mode == 'reserve' then
  for i = 1, n do redis.call('ZREM', KEYS[2*i], rid) end
  out[1] = 1
  return out
end
if mode == 'reserve' then
  for i = 1, n do
    local z = KEYS[2*i]
    redis.call('ZADD', z, now + ttl, rid)
    redis.call('PEXPIREAT', z, tonumber(ARGV[5 + 2*i]))
    out[4 + 2*(i-1)] = out[4 + 2*(i-1)] + 1
  end
end
return out
"""

# KEYS: (hash, in-flight zset) per counter. ARGV: request id, ledger field, messages, then expire-at ms
# per counter. Works whether or not the counter is ready: a rebuild merges with what settles wrote.
_SETTLE_LUA = """
local rid, fld, msgs = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('ZREM', z, rid)
  if msgs ~= 0 and redis.call('HSETNX', h, fld, msgs) == 1 then
    redis.call('HINCRBY', h, 'total', msgs)
    redis.call('PEXPIREAT', h, tonumber(ARGV[3 + i]))
  end
end
return 1
"""

# KEYS: hash, in-flight zset. ARGV: expire-at ms, final (1/0), number of ledger fields, then
# (field, messages, request id) per ledger line, then (request id, expiry ms) per database reservation.
_REBUILD_LUA = """
local h, z = KEYS[1], KEYS[2]
local expire_at, final, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 0, n - 1 do
  local fld, msgs, rid = ARGV[4 + 3*i], tonumber(ARGV[5 + 3*i]), ARGV[6 + 3*i]
  if redis.call('HSETNX', h, fld, msgs) == 1 then redis.call('HINCRBY', h, 'total', msgs) end
  redis.call('ZREM', z, rid)
end
local rest = 4 + 3*n
while rest < #ARGV do
  redis.call('ZADD', z, 'NX', tonumber(ARGV[rest + 1]), ARGV[rest])
  rest = rest + 2
end
if final == '1' then
  local t = redis.call('TIME')
  redis.call('HSET', h, 'ready', 1, 'checked', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSETNX', h, 'total', 0)
end
redis.call('PEXPIREAT', h, expire_at)
if redis.call('EXISTS', z) == 1 then redis.call('PEXPIREAT', z, expire_at) end
return 1
"""


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
    """One quota counter: a workspace's (or a member's) messages over a range of billing days."""

    key: str
    workspace_id: int
    user_id: int | None
    first_day: dt.date
    last_day: dt.date
    reset_at: dt.datetime

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


@dataclass(frozen=True)
class Reservation:
    """One in-flight message held for `request_id`; `finish_request` settles it to the true count."""

    request_id: str
    workspace_id: int
    user_id: int
    byok: bool
    budget: Budget
    day: dt.date
    backend: str = BACKEND_NONE
    counters: tuple[Counter, ...] = field(default=())


# ---- billing periods ---------------------------------------------------------------------------


def billing_timezone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.BILLING_DAY_TIMEZONE)


def billing_day(at: dt.datetime | None = None) -> dt.date:
    return (at or timezone.now()).astimezone(billing_timezone()).date()


def day_start(day: dt.date) -> dt.datetime:
    """The aware UTC instant a billing day starts."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=billing_timezone()).astimezone(dt.UTC)


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    first = day.replace(day=1)
    next_first = (first + dt.timedelta(days=32)).replace(day=1)
    return first, next_first - dt.timedelta(days=1)


def format_duration(seconds: int) -> str:
    """OpenAI's rate-limit reset style: 59s, 6m0s, 3h2m5s."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


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


def scopes_for(*, workspace: WorkspaceAccess, user_id: int, day: dt.date) -> tuple[Scope, ...]:
    """Every limit that applies to a request by `user_id` in `workspace` on `day` (remembered: it is pure)."""
    return _scopes(workspace, user_id, day, settings.BILLING_DAY_TIMEZONE)


@functools.lru_cache(maxsize=8192)
def _scopes(workspace: WorkspaceAccess, user_id: int, day: dt.date, _timezone: str) -> tuple[Scope, ...]:
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
    return tuple(scopes)


def _distinct_counters(scopes: Sequence[Scope]) -> list[Counter]:
    seen: dict[str, Counter] = {}
    for scope in scopes:
        seen.setdefault(scope.counter.key, scope.counter)
    return list(seen.values())


# ---- budgets and refusals ----------------------------------------------------------------------


def _budget(scopes: Sequence[Scope], figures: dict[str, tuple[int, int]], day: dt.date) -> Budget:
    if not scopes:
        return Budget(limit=None, remaining=None, reset_at=day_start(day + dt.timedelta(days=1)))
    tightest = min(
        scopes,
        key=lambda s: (max(0, s.limit - sum(figures[s.counter.key])), s.limit, -s.counter.reset_at.timestamp()),
    )
    remaining = max(0, tightest.limit - sum(figures[tightest.counter.key]))
    return Budget(limit=tightest.limit, remaining=remaining, reset_at=tightest.counter.reset_at)


def _refusal(scopes: Sequence[Scope], figures: dict[str, tuple[int, int]]) -> QuotaExceeded:
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
        "Requests made with your own OpenRouter key (BYOK) do not count against it."
    )
    return QuotaExceeded(
        message=message,
        code=scope.code,
        limit=scope.limit,
        reset_at=scope.counter.reset_at,
        retry_after_seconds=retry_after,
    )


# ---- Redis availability ------------------------------------------------------------------------


class _RedisHealth:
    """A small circuit breaker: after a failure, skip Redis for a few seconds instead of timing out per request."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self.had_outage = False
        self.reconciled_since_outage: set[str] = set()
        self.lock = threading.Lock()

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.usable():
                logger.error(
                    "quota: Redis unavailable (%s); enforcing limits in the database until it is back",
                    exc.__class__.__name__,
                )
            self.down_until = time.monotonic() + settings.BILLING_REDIS_RETRY_SECONDS
            self.had_outage = True
            self.reconciled_since_outage = set()

    def needs_reconcile(self, key: str) -> bool:
        return self.had_outage and key not in self.reconciled_since_outage

    def reconciled(self, key: str) -> None:
        if self.had_outage:
            self.reconciled_since_outage.add(key)


_redis_health = _RedisHealth()


def reset_quota_state() -> None:
    """Forget the circuit breaker and local holds (tests)."""
    global _redis_health
    _redis_health = _RedisHealth()
    _local_holds.holds.clear()


# ---- the ledger side: used messages, rebuild data, database reservations -----------------------


def _counter_events(counter: Counter):
    events = UsageEvent.objects.filter(
        workspace_id=counter.workspace_id, day__gte=counter.first_day, day__lte=counter.last_day, byok=False
    )
    if counter.user_id is not None:
        events = events.filter(user_id=counter.user_id)
    return events


def _counter_reservations(counter: Counter, now: dt.datetime):
    reservations = QuotaReservation.objects.filter(
        workspace_id=counter.workspace_id, day__gte=counter.first_day, day__lte=counter.last_day, expires_at__gt=now
    )
    if counter.user_id is not None:
        reservations = reservations.filter(user_id=counter.user_id)
    return reservations


def ledger_lines_for(counter: Counter, *, since: dt.datetime | None = None) -> list[tuple[str, int, str]]:
    """(field, messages, request id) of every ledger line that counts against `counter` (written since `since`)."""
    events = _counter_events(counter).exclude(counted_messages=0)
    if since is not None:
        events = events.filter(created_at__gte=since)
    rows = events.values_list("kind", "request_id", "counted_messages")
    return [(f"{kind}:{request_id}", messages, request_id) for kind, request_id, messages in rows]


def _rebuild_payload(
    counter: Counter, since: dt.datetime | None = None
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int]]]:
    # Holds first, then the ledger: a request finishing in between shows up in both and is counted
    # once, as used. The other order could miss it in both.
    now = timezone.now()
    holds = list(_counter_reservations(counter, now).values_list("request_id", "expires_at"))
    lines = ledger_lines_for(counter, since=since)
    finished = {request_id for _field, _messages, request_id in lines}
    reservations = [
        (request_id, int(expires_at.timestamp() * 1000))
        for request_id, expires_at in holds
        if request_id not in finished
    ]
    return lines, reservations


def _figures_at_once(counters: Sequence[Counter], *, workspace_id: int, request_id: str) -> dict[str, tuple[int, int]]:
    """{counter key: (used, in flight)} read in ONE statement, so one snapshot.

    Separate queries under READ COMMITTED could read the ledger before a request's line commits and
    the holds after its reservation is deleted, missing it in both: one admission too many.
    """
    now = timezone.now()
    annotations = {}
    for index, counter in enumerate(counters):
        used = _counter_events(counter).order_by().values("workspace_id").annotate(total=Sum("counted_messages"))
        holds = (
            _counter_reservations(counter, now)
            .exclude(request_id=request_id)
            .order_by()
            .values("workspace_id")
            .annotate(total=Count("id"))
        )
        annotations[f"used_{index}"] = Coalesce(Subquery(used.values("total"), output_field=IntegerField()), Value(0))
        annotations[f"holds_{index}"] = Coalesce(Subquery(holds.values("total"), output_field=IntegerField()), Value(0))
    row = Workspace.objects.filter(pk=workspace_id).annotate(**annotations).values(*annotations).first()
    if row is None:  # a workspace deleted under a live key: nothing to count against
        return {counter.key: (0, 0) for counter in counters}
    return {counter.key: (row[f"used_{i}"], row[f"holds_{i}"]) for i, counter in enumerate(counters)}


def lock_in_transaction(*, namespace: int, key: int) -> None:
    """Serialise holders of (namespace, key) until the current transaction ends.

    PostgreSQL: a transaction-level advisory lock. SQLite has one writer, so a first write takes its
    write lock for the rest of the transaction; callers there are serialised whatever the key.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, key % 2**31])
    else:
        QuotaReservation.objects.filter(pk=-1).delete()


def _lock_workspace(workspace_id: int) -> None:
    lock_in_transaction(namespace=_ADVISORY_LOCK_CLASS, key=workspace_id)
    # Reservations of processes that died would otherwise linger until their workspace's next reserve.
    QuotaReservation.objects.filter(workspace_id=workspace_id, expires_at__lte=timezone.now()).delete()


def reserve_in_database(
    *,
    request_id: str,
    scopes: Sequence[Scope],
    workspace_id: int,
    user_id: int,
    day: dt.date,
    reserve: bool,
    extra_holds: dict[str, int] | None = None,
) -> tuple[bool, dict[str, tuple[int, int]]]:
    """Check every scope and, if all have room (and `reserve`), hold one message. Under a workspace lock.

    `extra_holds` are in-flight messages per counter key the database does not know (Redis holds).
    Returns (admitted, {counter key: (used, in flight)}), in-flight figures including this reservation.
    """
    counters = _distinct_counters(scopes)
    with transaction.atomic():
        if reserve:
            _lock_workspace(workspace_id)
        now = timezone.now()
        figures = _figures_at_once(counters, workspace_id=workspace_id, request_id=request_id)
        if extra_holds:
            figures = {key: (used, held + extra_holds.get(key, 0)) for key, (used, held) in figures.items()}
        admitted = all(sum(figures[s.counter.key]) + 1 <= s.limit for s in scopes)
        if reserve and admitted:
            expires_at = now + dt.timedelta(seconds=settings.BILLING_RESERVATION_TTL_SECONDS)
            QuotaReservation.objects.update_or_create(
                request_id=request_id,
                defaults={"workspace_id": workspace_id, "user_id": user_id, "day": day, "expires_at": expires_at},
            )
            figures = {key: (used, inflight + 1) for key, (used, inflight) in figures.items()}
    return admitted, figures


def release_database_reservations(*, request_ids: Iterable[str]) -> None:
    QuotaReservation.objects.filter(request_id__in=list(request_ids)).delete()


# ---- the Redis side ----------------------------------------------------------------------------

_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scripts_for(client: object) -> tuple[object, object, object]:
    scripts = _scripts.get(client)
    if scripts is None:
        scripts = (
            client.register_script(_RESERVE_LUA),
            client.register_script(_SETTLE_LUA),
            client.register_script(_REBUILD_LUA),
        )
        _scripts[client] = scripts
    return scripts


async def _run_in_one_write(
    client: aioredis.Redis, script: AsyncScript, calls: list[tuple[list[str], list[object]]]
) -> list[object]:
    """Run `script` once per (keys, args), all pipelined in one write; loaded first if Redis lost it.

    Only for idempotent scripts (the settle): after a NOSCRIPT the whole batch runs again.
    """
    for _attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        if not any(isinstance(result, NoScriptError) for result in results):
            break
        await client.script_load(script.script)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _rebuild_calls(counter: Counter, lines: list[tuple[str, int, str]], reservations: list[tuple[str, int]]):
    """The rebuild script's argument lists, in chunks; only the last marks the counter ready."""
    chunks = [lines[i : i + _REBUILD_CHUNK] for i in range(0, len(lines), _REBUILD_CHUNK)] or [[]]
    for index, chunk in enumerate(chunks):
        final = index == len(chunks) - 1
        args: list[object] = [counter.expire_at_ms, "1" if final else "0", len(chunk)]
        for fld, messages, request_id in chunk:
            args.extend((fld, messages, request_id))
        if final:
            for request_id, expires_ms in reservations:
                args.extend((request_id, expires_ms))
        yield args


_rebuilds_in_progress: dict[tuple[int, str], asyncio.Future] = {}


async def _rebuild_counter(client: object, counter: Counter, *, since: dt.datetime | None = None) -> None:
    """Merge the ledger (lines written since `since`, or all) into a counter; idempotent.

    Concurrent callers in this loop share one rebuild.
    """
    loop_key = (id(asyncio.get_running_loop()), counter.key, since is None)
    pending = _rebuilds_in_progress.get(loop_key)
    if pending is not None:
        await asyncio.shield(pending)
        return
    future = asyncio.get_running_loop().create_future()
    _rebuilds_in_progress[loop_key] = future
    try:
        lines, reservations = await run_db(_rebuild_payload, counter, since)
        rebuild = _scripts_for(client)[2]
        for args in _rebuild_calls(counter, lines, reservations):
            await rebuild(keys=list(counter.redis_keys), args=args)
        if since is None:
            _redis_health.reconciled(counter.key)
        future.set_result(None)
    except BaseException as exc:
        future.set_exception(exc)
        raise
    finally:
        _rebuilds_in_progress.pop(loop_key, None)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved, so an unawaited failure is not reported twice


def rebuild_counter_sync(*, client: object, counter: Counter) -> None:
    lines, reservations = _rebuild_payload(counter)
    rebuild = _scripts_for(client)[2]
    for args in _rebuild_calls(counter, lines, reservations):
        rebuild(keys=list(counter.redis_keys), args=args)


async def _reconcile(client: object, counters: Sequence[Counter]) -> None:
    """The periodic merge: lines of the last few intervals, enough to catch settles Redis missed.

    A process whose own settles failed trips its breaker and merges everything when Redis is back.
    """
    since = timezone.now() - dt.timedelta(seconds=settings.BILLING_QUOTA_RECONCILE_SECONDS * 3 + 300)
    for counter in counters:
        try:
            await _rebuild_counter(client, counter, since=since)
        except Exception:
            logger.warning("quota: could not reconcile counter %s with the ledger", counter.key, exc_info=True)


async def _run_reserve_script(
    client: object, *, mode: str, request_id: str, scopes: Sequence[Scope], access_epoch: int | None = None
) -> tuple[bool, dict[str, tuple[int, int]]]:
    counters = _distinct_counters(scopes)
    for counter in counters:
        if _redis_health.needs_reconcile(counter.key):
            await _rebuild_counter(client, counter)
    limits = {c.key: min(s.limit for s in scopes if s.counter.key == c.key) for c in counters}
    keys: list[str] = []
    args: list[object] = [
        mode,
        request_id,
        settings.BILLING_RESERVATION_TTL_SECONDS * 1000,
        settings.BILLING_QUOTA_RECONCILE_SECONDS * 1000,
        "" if access_epoch is None else access_epoch,
    ]
    for counter in counters:
        keys.extend(counter.redis_keys)
        args.extend((limits[counter.key], counter.expire_at_ms))
    keys.append(ACCESS_EPOCH_KEY)
    reserve = _scripts_for(client)[0]
    for _attempt in range(3):
        result = [int(x) for x in await reserve(keys=keys, args=args)]
        if result[0] == 3:
            raise AccessChanged(f"access epoch {access_epoch} is no longer current")
        if result[0] == 2:
            for index in result[1:]:
                await _rebuild_counter(client, counters[index - 1])
            continue
        if result[1]:
            # Once per interval a caller merges the ledger in, healing settles Redis missed.
            run_in_background(_reconcile(client, counters))
        figures = {c.key: (result[2 + 2 * i], result[3 + 2 * i]) for i, c in enumerate(counters)}
        return result[0] == 0, figures
    raise RuntimeError("quota counters could not be rebuilt")


async def _check(
    *,
    request_id: str,
    scopes: Sequence[Scope],
    workspace_id: int,
    user_id: int,
    day: dt.date,
    reserve: bool,
    access_epoch: int | None = None,
) -> tuple[bool, dict[str, tuple[int, int]], str]:
    """Admit (and hold one message) or refuse, on Redis when it is usable, else in the database.

    With `access_epoch`, first confirm that no access changed since the caller's grant was read
    (in the same script on Redis), or raise AccessChanged.
    """
    client = async_redis()
    if client is not None and _redis_health.usable():
        started = time.monotonic()
        for attempt in range(_REDIS_ATTEMPTS):
            try:
                admitted, figures = await _run_reserve_script(
                    client,
                    mode="reserve" if reserve else "peek",
                    request_id=request_id,
                    scopes=scopes,
                    access_epoch=access_epoch,
                )
                return admitted, figures, BACKEND_REDIS
            except AccessChanged:
                raise
            except Exception as exc:
                # Processes that disagree on where limits live can together admit too much, so a
                # slow connect under load is retried; only a Redis that stays away moves us to the database.
                if attempt == _REDIS_ATTEMPTS - 1 or time.monotonic() - started > _REDIS_RETRY_BUDGET_SECONDS:
                    _redis_health.failed(exc)
                    break
                await asyncio.sleep(0.05 * (attempt + 1))
    if access_epoch is not None:
        await confirm_access_epoch(access_epoch)
    admitted, figures = await run_db(
        reserve_in_database,
        request_id=request_id,
        scopes=scopes,
        workspace_id=workspace_id,
        user_id=user_id,
        day=day,
        reserve=reserve,
        extra_holds=_local_holds.counts(),
    )
    return admitted, figures, BACKEND_DATABASE


class _LocalHolds:
    """This process's unsettled Redis holds. Were Redis to die, the database path still counts them."""

    def __init__(self) -> None:
        self.holds: dict[str, tuple[float, tuple[str, ...]]] = {}

    def add(self, request_id: str, counters: Sequence[Counter]) -> None:
        expires = time.monotonic() + settings.BILLING_RESERVATION_TTL_SECONDS
        self.holds[request_id] = (expires, tuple(c.key for c in counters))

    def discard(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self.holds.pop(request_id, None)

    def counts(self) -> dict[str, int]:
        now = time.monotonic()
        counts: dict[str, int] = {}
        for request_id, (expires, keys) in list(self.holds.items()):
            if expires < now:
                del self.holds[request_id]
                continue
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
        return counts


_local_holds = _LocalHolds()


async def reserve_message(
    *, request_id: str, workspace: WorkspaceAccess, user_id: int, byok: bool, access_epoch: int | None = None
) -> Reservation:
    """Hold one message in every limit that applies, atomically across them, or raise QuotaExceeded.

    BYOK requests are never refused and hold nothing; their reservation carries the budget for headers.
    Idempotent per request id: reserving twice holds one message. `access_epoch`: the epoch at which
    the caller's grant was read, when it is still to be confirmed (AccessChanged if it is stale).
    """
    day = billing_day()
    scopes = scopes_for(workspace=workspace, user_id=user_id, day=day)
    counters = tuple(_distinct_counters(scopes))
    if not scopes:
        if access_epoch is not None:
            await confirm_access_epoch(access_epoch)
        budget = _budget(scopes, {}, day)
        return Reservation(request_id, workspace.workspace_id, user_id, byok, budget, day, BACKEND_NONE, counters)
    admitted, figures, backend = await _check(
        request_id=request_id,
        scopes=scopes,
        workspace_id=workspace.workspace_id,
        user_id=user_id,
        day=day,
        reserve=not byok,
        access_epoch=access_epoch,
    )
    if not byok and not admitted:
        raise _refusal(scopes, figures)
    budget = _budget(scopes, figures, day)
    if byok:
        return Reservation(request_id, workspace.workspace_id, user_id, byok, budget, day, BACKEND_NONE, counters)
    if backend == BACKEND_REDIS:
        _local_holds.add(request_id, counters)
    return Reservation(request_id, workspace.workspace_id, user_id, byok, budget, day, backend, counters)


async def current_budget(*, workspace: WorkspaceAccess, user_id: int) -> Budget:
    """The caller's budget without reserving anything (for responses such as GET /v1/models)."""
    day = billing_day()
    scopes = scopes_for(workspace=workspace, user_id=user_id, day=day)
    if not scopes:
        return _budget(scopes, {}, day)
    _admitted, figures, _backend = await _check(
        request_id="", scopes=scopes, workspace_id=workspace.workspace_id, user_id=user_id, day=day, reserve=False
    )
    return _budget(scopes, figures, day)


# ---- settling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterSettle:
    """Move one ledger line into Redis counters: release the request's hold, add its messages once."""

    request_id: str
    ledger_field: str
    messages: int
    counters: tuple[Counter, ...]


def _settle_args(item: CounterSettle) -> tuple[list[str], list[object]]:
    keys: list[str] = []
    for counter in item.counters:
        keys.extend(counter.redis_keys)
    args: list[object] = [item.request_id, item.ledger_field, item.messages]
    args.extend(counter.expire_at_ms for counter in item.counters)
    return keys, args


async def settle_counters(items: Sequence[CounterSettle]) -> None:
    """Apply settles in one pipelined burst. Never raises: the ledger is durable and counters reconcile with it."""
    _local_holds.discard(item.request_id for item in items)
    items = [item for item in items if item.counters]
    client = async_redis()
    if not items or client is None or not _redis_health.usable():
        return
    try:
        settle = _scripts_for(client)[1]
        await _run_in_one_write(client, settle, [_settle_args(item) for item in items])
    except Exception as exc:
        _redis_health.failed(exc)
        logger.warning("quota: could not settle %d requests in Redis; counters will reconcile", len(items))


def settle_counters_sync(items: Sequence[CounterSettle]) -> None:
    """The same from sync code (Celery tasks). Never raises."""
    items = [item for item in items if item.counters]
    client = sync_redis()
    if not items or client is None:
        return
    try:
        settle = _scripts_for(client)[1]
        for item in items:
            keys, args = _settle_args(item)
            settle(keys=keys, args=args)
    except Exception:
        logger.warning("quota: could not settle %d ledger lines in Redis; counters will reconcile", len(items))


async def release_reservation(reservation: Reservation) -> None:
    """Give back a hold without recording anything: the request never reached the upstream. Never raises."""
    if reservation.byok or not reservation.counters:
        return
    await settle_counters(
        [CounterSettle(request_id=reservation.request_id, ledger_field="", messages=0, counters=reservation.counters)]
    )
    if reservation.backend == BACKEND_DATABASE:
        try:
            await run_db(release_database_reservations, request_ids=[reservation.request_id])
        except Exception:
            logger.warning("quota: could not release %s; it expires on its own", reservation.request_id, exc_info=True)
