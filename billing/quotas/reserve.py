"""Reserve and settle, the quotas' public face: hold one message in every limit that applies, atomically.

On Redis one script checks and holds every counter at once; without Redis (or while the breaker is
open) the same checks run in the database under a per-workspace lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from accounts.access import AccessChanged, WorkspaceAccess, confirm_access_epoch
from billing.quotas.breaker import local_holds, redis_health
from billing.quotas.counters import CounterSettle, run_reserve_script, settle_counters
from billing.quotas.database import release_database_reservations, reserve_in_database
from billing.quotas.periods import billing_day
from billing.quotas.scopes import (
    Budget,
    Counter,
    KeyBudget,
    Scope,
    budget_for,
    distinct_counters,
    refusal_for,
    scopes_for,
)
from writingmate.db import run_db
from writingmate.redis_connection import async_redis

logger = logging.getLogger("billing.quotas")

BACKEND_NONE = "none"
BACKEND_REDIS = "redis"
BACKEND_DATABASE = "database"

_REDIS_ATTEMPTS = 3
_REDIS_RETRY_BUDGET_SECONDS = 2.0


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
    if client is not None and redis_health.usable():
        started = time.monotonic()
        for attempt in range(_REDIS_ATTEMPTS):
            try:
                admitted, figures = await run_reserve_script(
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
                    redis_health.failed(exc)
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
        extra_holds=local_holds.counts(),
    )
    return admitted, figures, BACKEND_DATABASE


async def reserve_message(
    *,
    request_id: str,
    workspace: WorkspaceAccess,
    user_id: int,
    byok: bool,
    access_epoch: int | None = None,
    key: KeyBudget | None = None,
) -> Reservation:
    """Hold one message in every limit that applies, atomically across them, or raise QuotaExceeded.

    BYOK requests are never refused and hold nothing; their reservation carries the budget for headers.
    Idempotent per request id: reserving twice holds one message. `access_epoch`: the epoch at which
    the caller's grant was read, when it is still to be confirmed (AccessChanged if it is stale).
    `key`: the developer key's own daily budget, held in the same atomic step as the others.
    """
    day = billing_day()
    scopes = scopes_for(workspace=workspace, user_id=user_id, day=day, key=key)
    counters = tuple(distinct_counters(scopes))
    if not scopes:
        if access_epoch is not None:
            await confirm_access_epoch(access_epoch)
        budget = budget_for(scopes, {}, day)
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
        raise refusal_for(scopes, figures)
    budget = budget_for(scopes, figures, day)
    if byok:
        return Reservation(request_id, workspace.workspace_id, user_id, byok, budget, day, BACKEND_NONE, counters)
    if backend == BACKEND_REDIS:
        local_holds.add(request_id, counters)
    return Reservation(request_id, workspace.workspace_id, user_id, byok, budget, day, backend, counters)


async def current_budget(*, workspace: WorkspaceAccess, user_id: int, key: KeyBudget | None = None) -> Budget:
    """The caller's budget without reserving anything (for responses such as GET /v1/models)."""
    day = billing_day()
    scopes = scopes_for(workspace=workspace, user_id=user_id, day=day, key=key)
    if not scopes:
        return budget_for(scopes, {}, day)
    _admitted, figures, _backend = await _check(
        request_id="", scopes=scopes, workspace_id=workspace.workspace_id, user_id=user_id, day=day, reserve=False
    )
    return budget_for(scopes, figures, day)


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
