"""The usage ledger: what a finished request is (UsageRecord), and writing its lines.

The ledger (UsageEvent) is append-only and the truth: daily_message_count rows and quota counters
are recomputed from it, so every function here is safe to re-run. Lines the database would not take
are spooled to Redis and replayed by the roll-up task.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from billing.counting import count_messages
from billing.models import UsageEvent
from billing.quotas import (
    CounterSettle,
    billing_day,
    counters_for,
    release_database_reservations,
    settle_counters_sync,
)
from writingmate.redis_connection import sync_redis

logger = logging.getLogger(__name__)

LEDGER_SPOOL_KEY = "wm:ledger:spool"


@dataclass(frozen=True)
class UsageRecord:
    """What the gateway hands billing about one finished request."""

    request_id: str
    workspace_id: int
    user_id: int
    key_id: int | None
    model: str
    endpoint: str  # "chat.completions" | "completions" | "responses" | "audio.transcriptions"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    byok: bool
    status: str  # a UsageEvent.Status value
    latency_ms: int
    generation_id: str = ""
    tokens_estimated: bool = False
    web_search_requests: int = 0  # as the upstream reports them; not part of the message count


@dataclass(frozen=True)
class LedgerEntry:
    usage: UsageRecord
    day: dt.date
    counted_messages: int
    created_at: dt.datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "usage": asdict(self.usage),
                "day": self.day.isoformat(),
                "counted_messages": self.counted_messages,
                "created_at": self.created_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> LedgerEntry:
        data = json.loads(raw)
        return cls(
            usage=UsageRecord(**data["usage"]),
            day=dt.date.fromisoformat(data["day"]),
            counted_messages=data["counted_messages"],
            created_at=dt.datetime.fromisoformat(data["created_at"]),
        )


def count_for(usage: UsageRecord) -> int:
    """The messages `usage` counts (pure; BYOK requests count too, they are just not limited)."""
    return count_messages(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        status=usage.status,
    )


def clamp_tokens(tokens: int) -> int:
    # An upstream reporting absurd usage must not overflow a bigint column and lose the event.
    return min(max(0, int(tokens)), 2**62)


def _text(value: str, length: int) -> str:
    # PostgreSQL refuses NUL in text; a client-chosen model name must not make a line unwritable.
    return str(value).replace("\x00", "")[:length]


_LEDGER_COLUMNS = (
    "request_id",
    "kind",
    "workspace_id",
    "user_id",
    "key_id",
    "model",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "counted_messages",
    "byok",
    "status",
    "tokens_estimated",
    "generation_id",
    "web_search_requests",
    "latency_ms",
    "day",
    "created_at",
)
_LEDGER_ROW = "(" + ", ".join(["%s"] * len(_LEDGER_COLUMNS)) + ")"


def _ledger_row(entry: LedgerEntry) -> tuple:
    usage, ops = entry.usage, connection.ops
    return (
        _text(usage.request_id, 64),
        UsageEvent.Kind.REQUEST.value,
        usage.workspace_id,
        usage.user_id,
        usage.key_id,
        _text(usage.model, 200),
        _text(usage.endpoint, 40),
        clamp_tokens(usage.prompt_tokens),
        clamp_tokens(usage.completion_tokens),
        clamp_tokens(usage.cached_tokens),
        min(entry.counted_messages, 2**31 - 1),
        usage.byok,
        usage.status,
        usage.tokens_estimated,
        _text(usage.generation_id, 200),
        min(max(0, usage.web_search_requests), 2**31 - 1),
        min(max(0, usage.latency_ms), 2**31 - 1),
        ops.adapt_datefield_value(entry.day),
        ops.adapt_datetimefield_value(entry.created_at),
    )


@functools.cache
def _json_insert_sql() -> str:
    """PostgreSQL: one fixed statement for any batch size; the rows travel as one JSON array."""
    table, columns = UsageEvent._meta.db_table, ", ".join(_LEDGER_COLUMNS)
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608
        f"FROM json_populate_recordset(NULL::{table}, %s::json) ON CONFLICT (request_id, kind) DO NOTHING"
    )


def _insert_ledger_rows(entries: Sequence[LedgerEntry]) -> None:
    """One INSERT of the whole batch that skips lines already there (idempotent per request id and kind).

    Written as SQL rather than bulk_create: building model instances and compiling the query cost
    ~0.5 ms of CPU per batch here. On PostgreSQL the rows go as one JSON parameter: the statement
    never changes, so psycopg converts it once, where a VALUES list growing with the batch was parsed
    again every time (13 us of CPU per line, more than the JSON encoding and the database's decoding).
    """
    rows = [_ledger_row(entry) for entry in entries]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The row ends with the day and created_at, which JSON carries as ISO 8601 text.
            batch = [
                dict(zip(_LEDGER_COLUMNS, (*row[:-2], row[-2].isoformat(), row[-1].isoformat()), strict=True))
                for row in rows
            ]
            cursor.execute(_json_insert_sql(), [json.dumps(batch)])
            return
        # Only constants and placeholders go into the text; the values travel as parameters.
        sql = (
            f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(_LEDGER_COLUMNS)}) "  # noqa: S608
            f"VALUES {', '.join([_LEDGER_ROW] * len(rows))} ON CONFLICT (request_id, kind) DO NOTHING"
        )
        cursor.execute(sql, [value for row in rows for value in row])


def write_ledger_entries(*, entries: Sequence[LedgerEntry], release_request_ids: Sequence[str] = ()) -> None:
    """Append many ledger lines in one transaction (one INSERT); idempotent per request id.

    Database-path reservations of the same requests are released in the same transaction, so a
    request is never counted both as used and as in flight once this commits.
    """
    if not entries:
        return
    if not release_request_ids:
        # One INSERT is atomic by itself: no BEGIN/COMMIT round trips on the hot path.
        _insert_ledger_rows(entries)
        return
    with transaction.atomic():
        _insert_ledger_rows(entries)
        release_database_reservations(request_ids=release_request_ids)


def write_ledger_entries_isolating(
    *, entries: Sequence[LedgerEntry], release_request_ids: Sequence[str] = ()
) -> list[LedgerEntry]:
    """`write_ledger_entries`, but a line the database rejects (not a connection problem) cannot take
    the rest of its batch down with it: the batch is retried line by line. Returns the rejected lines.

    Connection problems (OperationalError, InterfaceError) propagate, for the caller to retry.
    """
    try:
        write_ledger_entries(entries=entries, release_request_ids=release_request_ids)
        return []
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        if len(entries) == 1:
            return list(entries)
    rejected = []
    for entry in entries:
        try:
            write_ledger_entries(entries=[entry], release_request_ids=[entry.usage.request_id])
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            rejected.append(entry)
    return rejected


def record_usage(*, usage: UsageRecord, day: dt.date | None = None) -> int:
    """Append one request's ledger line and count it in the quota counters (sync). Returns its messages."""
    now = timezone.now()
    entry = LedgerEntry(usage=usage, day=day or billing_day(now), counted_messages=count_for(usage), created_at=now)
    write_ledger_entries(entries=[entry], release_request_ids=[usage.request_id])
    if not usage.byok:
        settle_counters_sync(
            [
                CounterSettle(
                    request_id=usage.request_id,
                    ledger_field=f"{UsageEvent.Kind.REQUEST}:{usage.request_id}",
                    messages=entry.counted_messages,
                    counters=counters_for(workspace_id=usage.workspace_id, user_id=usage.user_id, day=entry.day),
                )
            ]
        )
    return entry.counted_messages


def spool_ledger_entries(*, entries: Sequence[LedgerEntry]) -> bool:
    """Park entries the database would not take in a Redis list; the roll-up task replays them."""
    client = sync_redis()
    if client is None:
        return False
    try:
        client.rpush(LEDGER_SPOOL_KEY, *[entry.to_json() for entry in entries])
    except Exception:
        logger.exception("ledger: could not spool %d usage events to Redis either", len(entries))
        return False
    return True


def drain_ledger_spool(*, batch_size: int = 500) -> list[tuple[dt.date, int]]:
    """Write spooled entries to the ledger (idempotent: the ledger ignores request ids it has).

    Returns the (day, workspace id) of each line replayed, for the caller to roll up.
    """
    client = sync_redis()
    if client is None:
        return []
    touched: list[tuple[dt.date, int]] = []
    while True:
        raw = client.lrange(LEDGER_SPOOL_KEY, 0, batch_size - 1)
        if not raw:
            return touched
        entries = [LedgerEntry.from_json(item) for item in raw]
        rejected = write_ledger_entries_isolating(
            entries=entries, release_request_ids=[e.usage.request_id for e in entries]
        )
        for entry in rejected:
            logger.critical("ledger: the database rejects spooled usage event %s", entry.to_json())
        # Removed only after the write committed: a crash in between replays, which the ledger ignores.
        client.ltrim(LEDGER_SPOOL_KEY, len(raw), -1)
        touched += [(e.day, e.usage.workspace_id) for e in entries]
