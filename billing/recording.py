"""Recording a finished /v1 request from async code: group-committed ledger lines, then settled quotas.

A batch opens when a request finishes and is written BILLING_LEDGER_LINGER_SECONDS later (or at once
when full); every request that finishes meanwhile, or while a batch is being written, joins it. So
even a single client's back-to-back requests share one INSERT, one hop to a database thread and one
settle, and that work stays off the next request's way; each caller still waits until its own line is
durable. Nothing here raises to the gateway: failures are retried and logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from billing.ledger import (
    LedgerEntry,
    UsageRecord,
    count_for,
    spool_ledger_entries,
    write_ledger_entries_isolating,
)
from billing.models import UsageEvent
from billing.quotas import BACKEND_DATABASE, CounterSettle, Reservation, counters_for, settle_counters
from billing.rollups import rollup_daily_message_counts
from writingmate.background import GroupCommitter, one_per_event_loop
from writingmate.db import run_db

logger = logging.getLogger(__name__)

_MAX_BATCH = 500
_FIRST_RETRY_SECONDS = 0.05
_MAX_RETRY_SECONDS = 5.0


@dataclass
class _Pending:
    reservation: Reservation
    entry: LedgerEntry
    done: asyncio.Future


class _LedgerCommitter(GroupCommitter[_Pending]):
    max_batch = _MAX_BATCH

    def linger_seconds(self) -> float:
        return settings.BILLING_LEDGER_LINGER_SECONDS

    async def commit(self, batch: list[_Pending]) -> None:
        entries = [p.entry for p in batch]
        released = [p.reservation.request_id for p in batch if p.reservation.backend == BACKEND_DATABASE]
        try:
            if await _write_with_retries(entries, released):
                await settle_counters([_counter_settle(p) for p in batch])
                _rollups().mark({(e.day, e.usage.workspace_id) for e in entries})
        except Exception:
            logger.exception("ledger: unexpected failure committing %d usage events", len(batch))
            for entry in entries:
                logger.critical("ledger: possibly UNRECORDED usage event %s", entry.to_json())
        finally:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_result(pending.entry.counted_messages)


async def _write_with_retries(entries: list[LedgerEntry], released: list[str]) -> bool:
    """Retry with backoff while the database is unreachable; past the deadline, spool to Redis or log it all."""
    deadline = time.monotonic() + settings.BILLING_LEDGER_RETRY_SECONDS
    delay = _FIRST_RETRY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            rejected = await run_db(write_ledger_entries_isolating, entries=entries, release_request_ids=released)
            for entry in rejected:
                logger.critical("ledger: the database rejects usage event %s", entry.to_json())
            if attempt > 1:
                logger.warning("ledger: wrote %d usage events after %d attempts", len(entries), attempt)
            return True
        except Exception:
            if time.monotonic() + delay > deadline:
                break
            logger.error(
                "ledger: could not write %d usage events (attempt %d); retrying in %.2fs",
                len(entries),
                attempt,
                delay,
                exc_info=attempt == 1,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)
    if await run_db(spool_ledger_entries, entries=entries):
        logger.critical("ledger: database unreachable; %d usage events spooled to Redis for replay", len(entries))
    else:
        for entry in entries:
            # The last resort: the line itself, in the log, for an operator to replay.
            logger.critical("ledger: UNRECORDED usage event %s", entry.to_json())
    return False


def _counter_settle(pending: _Pending) -> CounterSettle:
    reservation, entry = pending.reservation, pending.entry
    usage = entry.usage
    if usage.byok:  # BYOK lines are in the ledger but never in the plan's counters; a stray hold is just released
        return CounterSettle(usage.request_id, "", 0, () if reservation.byok else reservation.counters)
    own = {counter.key for counter in reservation.counters}
    return CounterSettle(
        request_id=usage.request_id,
        ledger_field=f"{UsageEvent.Kind.REQUEST}:{usage.request_id}",
        messages=entry.counted_messages,
        counters=reservation.counters,
        # A limit lifted today may come back today: its counter, if kept, must not miss these messages.
        if_present=tuple(
            counter
            for counter in counters_for(workspace_id=usage.workspace_id, user_id=usage.user_id, day=entry.day)
            if counter.key not in own
        ),
    )


class _RollupsAfterWrites:
    """Keeps daily_message_count current without Celery beat (BILLING_ROLLUP_AFTER_WRITES_SECONDS > 0).

    The (day, workspace) pairs that ledger batches touched are rolled up on a database thread after the
    batch's callers have their answer, so no request waits for it, and each roll-up starts at least one
    interval after the previous one ended.
    """

    def __init__(self) -> None:
        self.dirty: set[tuple[dt.date, int]] = set()
        self.task: asyncio.Task | None = None
        self.last_run = 0.0

    def mark(self, touched: set[tuple[dt.date, int]]) -> None:
        if settings.BILLING_ROLLUP_AFTER_WRITES_SECONDS <= 0:
            return
        self.dirty |= touched
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.dirty:
                wait = self.last_run + settings.BILLING_ROLLUP_AFTER_WRITES_SECONDS - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                touched, self.dirty = self.dirty, set()
                try:
                    await run_db(_roll_up, touched)
                except Exception:
                    logger.warning("roll-up after ledger writes failed; the next one retries", exc_info=True)
                    self.dirty |= touched
                finally:
                    # From its end, not its start: a roll-up whose thread started late (a busy machine)
                    # is still followed by a whole interval before the next one.
                    self.last_run = time.monotonic()
        finally:
            self.task = None


def _roll_up(touched: set[tuple[dt.date, int]]) -> None:
    for day in {day for day, _ in touched}:
        rollup_daily_message_counts(days=[day], workspace_ids={w for d, w in touched if d == day})


_rollups = one_per_event_loop(_RollupsAfterWrites)


_committer = one_per_event_loop(_LedgerCommitter)


async def finish_request(*, reservation: Reservation, usage: UsageRecord) -> int:
    """Make the request's ledger line durable, settle its reservation, and return its counted messages.

    Never raises. Idempotent per request id (the ledger ignores a second line, counters a second settle).
    """
    try:
        messages = count_for(usage)
    except Exception:
        logger.exception("billing: could not count %s; recording it with 1 message", usage.request_id)
        messages = 1
    try:
        entry = LedgerEntry(usage=usage, day=reservation.day, counted_messages=messages, created_at=timezone.now())
        pending = _Pending(reservation=reservation, entry=entry, done=asyncio.get_running_loop().create_future())
        _committer().submit(pending)
        return await asyncio.shield(pending.done)
    except Exception:
        logger.exception("billing: finishing %s failed: %r", usage.request_id, usage)
        return messages
