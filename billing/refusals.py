"""Every refused /v1 request on record, at a bounded cost however many there are.

`note_refusal` is called where the gateway renders an error; it only adds one to a counter in this
process (no I/O on the response path). Counters are keyed by minute and by who and why (status, code,
endpoint, key or address, workspace, model), and a writer task per event loop upserts them into
`billing.Refusal` every REFUSAL_FLUSH_SECONDS in one statement, like the ledger's group commit.
A flood therefore costs one dict update per request and, per flush, one row per minute per key or
address and reason: who sends the refusals chooses neither how many rows they make nor how big they
are. Each subject (a key, or an address when no key is known) gets at most _DETAIL_ROWS distinct rows
a minute; beyond that its refusals are folded into one row whose varying parts read "*".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing.models import Refusal
from billing.quotas import billing_day
from writingmate.db import run_db

logger = logging.getLogger(__name__)

FOLDED = "*"
_DETAIL_ROWS = 8  # distinct rows per subject per minute before the rest are folded
_MAX_GROUPS = 10_000  # distinct rows buffered in a process before everything new is folded
_ROWS_PER_STATEMENT = 200


@dataclass(frozen=True)
class RefusalKey:
    """The identity of one Refusal row (within its minute)."""

    minute: dt.datetime
    status: int
    code: str
    endpoint: str
    key_id: int | None
    key_prefix: str
    user_id: int | None
    workspace_id: int | None
    model: str
    address: str

    def group(self) -> str:
        parts = (
            self.status,
            self.code,
            self.endpoint,
            self.key_id,
            self.key_prefix,
            self.user_id,
            self.workspace_id,
            self.model,
            self.address,
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()


@dataclass
class _Tally:
    count: int
    first_at: dt.datetime
    last_at: dt.datetime
    message: str


class _Buffer:
    """Refusals counted in this process and not yet written; shared by every event loop of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tallies: dict[RefusalKey, _Tally] = {}
        self.rows_per_subject: dict[tuple[dt.datetime, object], int] = {}

    def add(self, key: RefusalKey, *, message: str, at: dt.datetime, count: int = 1) -> None:
        with self.lock:
            tally = self.tallies.get(key)
            if tally is None:
                key = self._bounded(key)
                tally = self.tallies.get(key)
            if tally is None:
                self.tallies[key] = _Tally(count, at, at, message[:300])
            else:
                tally.count += count
                tally.last_at = max(tally.last_at, at)

    def _bounded(self, key: RefusalKey) -> RefusalKey:
        """`key`, or the folded row it counts in once its subject (or the buffer) has enough rows."""
        if len(self.tallies) >= _MAX_GROUPS:
            return RefusalKey(key.minute, key.status, key.code, "", None, FOLDED, None, None, FOLDED, FOLDED)
        subject = (key.minute, key.key_id if key.key_id is not None else key.address)
        rows = self.rows_per_subject.get(subject, 0)
        if rows >= _DETAIL_ROWS:
            known = key.key_id is not None
            return RefusalKey(
                key.minute,
                key.status,
                key.code,
                FOLDED,
                key.key_id,
                key.key_prefix if known else FOLDED,
                key.user_id,
                key.workspace_id,
                FOLDED,
                FOLDED if known else key.address,
            )
        self.rows_per_subject[subject] = rows + 1
        return key

    def take(self) -> dict[RefusalKey, _Tally]:
        """The tallies to write. The rows each subject has this minute are remembered across writes,
        so the bound holds per minute, however often the buffer is written."""
        with self.lock:
            taken, self.tallies = self.tallies, {}
            current = timezone.now().replace(second=0, microsecond=0)
            self.rows_per_subject = {s: n for s, n in self.rows_per_subject.items() if s[0] >= current}
            return taken

    def clear(self) -> None:
        with self.lock:
            self.tallies, self.rows_per_subject = {}, {}

    def give_back(self, tallies: dict[RefusalKey, _Tally]) -> None:
        """Return unwritten tallies for the next flush (still bounded: they fold like new ones)."""
        for key, tally in tallies.items():
            self.add(key, message=tally.message, at=tally.first_at, count=tally.count)


_buffer = _Buffer()
_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()


def note_refusal(
    *,
    status: int,
    code: str | None,
    endpoint: str,
    address: str,
    message: str = "",
    key_id: int | None = None,
    key_prefix: str = "",
    user_id: int | None = None,
    workspace_id: int | None = None,
    model: str = "",
) -> None:
    """Count one refused request. Cheap and synchronous: no I/O, never raises."""
    try:
        now = timezone.now()
        key = RefusalKey(
            minute=now.replace(second=0, microsecond=0),
            status=int(status),
            code=_clean(code or "", 64),
            endpoint=_clean(endpoint, 40),
            key_id=key_id,
            key_prefix=_clean(key_prefix, 16),
            user_id=user_id,
            workspace_id=workspace_id,
            model=_clean(model, 200),
            address=_clean(address, 64),
        )
        _buffer.add(key, message=_clean(message, 300), at=now)
        _ensure_writer()
    except Exception:
        logger.exception("refusals: could not count a %s refusal", status)


def _clean(value: str, length: int) -> str:
    # PostgreSQL refuses NUL in text; a client-chosen model name must not make a row unwritable.
    return str(value).replace("\x00", "")[:length]


def _ensure_writer() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no event loop (a sync caller): the next flush, or flush_refusals_sync(), writes it
    if loop not in _writers:
        _writers[loop] = loop.create_task(_write_while_pending(loop))


async def _write_while_pending(loop: asyncio.AbstractEventLoop) -> None:
    try:
        while True:
            await asyncio.sleep(settings.REFUSAL_FLUSH_SECONDS)
            await flush_refusals()
            if not pending_refusals():
                # No await between this check and leaving: a refusal counted later starts a new writer.
                return
    finally:
        _writers.pop(loop, None)


def pending_refusals() -> int:
    """Rows counted in this process and not written yet."""
    return len(_buffer.tallies)


async def flush_refusals() -> int:
    """Write every buffered refusal now (from async code). Returns the rows written."""
    taken = _buffer.take()
    if not taken:
        return 0
    try:
        await run_db(write_refusals, tallies=taken)
    except Exception:
        logger.warning("refusals: could not write %d rows; keeping them for the next flush", len(taken), exc_info=True)
        _buffer.give_back(taken)
        return 0
    return len(taken)


def flush_refusals_sync() -> int:
    """Write every buffered refusal now, from sync code (tests, management commands)."""
    taken = _buffer.take()
    write_refusals(tallies=taken)
    return len(taken)


_COLUMNS = (
    "minute",
    "day",
    "status",
    "code",
    "endpoint",
    "key_id",
    "key_prefix",
    "user_id",
    "workspace_id",
    "model",
    "address",
    "message",
    "count",
    "first_at",
    "last_at",
    '"group"',
)


def write_refusals(*, tallies: dict[RefusalKey, _Tally]) -> None:
    """Upsert tallies: a row that exists for the minute and group gets the counts added."""
    items = list(tallies.items())
    for start in range(0, len(items), _ROWS_PER_STATEMENT):
        _upsert(items[start : start + _ROWS_PER_STATEMENT])


def _upsert(items: Sequence[tuple[RefusalKey, _Tally]]) -> None:
    ops, table = connection.ops, Refusal._meta.db_table
    rows = []
    for key, tally in items:
        rows.append(
            (
                ops.adapt_datetimefield_value(key.minute),
                ops.adapt_datefield_value(billing_day(key.minute)),
                key.status,
                key.code,
                key.endpoint,
                key.key_id,
                key.key_prefix,
                key.user_id,
                key.workspace_id,
                key.model,
                key.address,
                tally.message,
                tally.count,
                ops.adapt_datetimefield_value(tally.first_at),
                ops.adapt_datetimefield_value(tally.last_at),
                key.group(),
            )
        )
    placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    # Only constants and placeholders go into the text; the values travel as parameters.
    sql = (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES {', '.join([placeholders] * len(rows))} "  # noqa: S608
        f'ON CONFLICT (minute, "group") DO UPDATE SET count = {table}.count + excluded.count, '
        f"last_at = CASE WHEN excluded.last_at > {table}.last_at THEN excluded.last_at ELSE {table}.last_at END"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


def reset_refusal_buffer() -> None:
    """Forget buffered refusals and the rows each subject has this minute (tests)."""
    _buffer.clear()
