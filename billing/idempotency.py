"""Idempotency-Key for non-streaming /v1 requests: Stripe's semantics, scoped to the developer key.

The gateway calls `begin_idempotent` before it reserves a message. A `Replay` is sent as it is, with
no upstream call and no charge; a `Proceed` is finished with `complete_idempotent` (the response is
stored for IDEMPOTENCY_KEY_TTL_SECONDS) or `abandon_idempotent` (nothing worth replaying: the key
may be retried). The unique (key, idempotency key) row is the lock: one request runs, duplicates
wait briefly for its response or get a 409.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import IdempotentRequest
from writingmate.db import run_db

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "idempotent-replayed"
_POLL_SECONDS = (0.02, 0.05, 0.1, 0.2)


class IdempotencyError(Exception):
    """Rendered by the gateway as an OpenAI-shaped error with `status`, `code` and `message`."""

    status = 400
    code = "invalid_idempotency_key"
    param: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        }


class InvalidIdempotencyKey(IdempotencyError):
    pass


class IdempotencyConflict(IdempotencyError):
    status = 409
    code = "idempotency_key_reused"


class IdempotencyInProgress(IdempotencyConflict):
    code = "idempotency_key_in_use"


@dataclass(frozen=True)
class Replay:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Proceed:
    key_id: int
    idempotency_key: str
    record_id: int


@dataclass(frozen=True)
class _InProgress:
    pass


def _lease_seconds() -> int:
    # A row still "in progress" after this belongs to a process that died: a retry may take it over.
    return settings.BILLING_RESERVATION_TTL_SECONDS


def claim_idempotency_key(*, key_id: int, idempotency_key: str, body_sha256: str) -> Replay | Proceed | _InProgress:
    """One attempt to own the key (sync). Raises IdempotencyConflict for a different body."""
    row: IdempotentRequest | None
    for _attempt in range(3):
        now = timezone.now()
        try:
            with transaction.atomic():
                row = IdempotentRequest.objects.create(
                    key_id=key_id,
                    idempotency_key=idempotency_key,
                    body_sha256=body_sha256,
                    created_at=now,
                    updated_at=now,
                )
            return Proceed(key_id=key_id, idempotency_key=idempotency_key, record_id=row.pk)
        except IntegrityError:
            pass
        row = IdempotentRequest.objects.filter(key_id=key_id, idempotency_key=idempotency_key).first()
        if row is None:
            continue  # abandoned in between: try to claim it again
        if row.created_at < now - dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS):
            IdempotentRequest.objects.filter(pk=row.pk, created_at=row.created_at).delete()
            continue
        if row.body_sha256 != body_sha256:
            raise IdempotencyConflict(
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than {idempotency_key!r} if you meant to execute a different request."
            )
        if row.state == IdempotentRequest.State.COMPLETED:
            headers = {**row.response_headers, REPLAYED_HEADER: "true"}
            return Replay(status=row.response_status or 200, headers=headers, body=bytes(row.response_body))
        if row.updated_at < now - dt.timedelta(seconds=_lease_seconds()):
            taken = IdempotentRequest.objects.filter(pk=row.pk, updated_at=row.updated_at).update(updated_at=now)
            if taken:
                return Proceed(key_id=key_id, idempotency_key=idempotency_key, record_id=row.pk)
        return _InProgress()
    return _InProgress()


async def begin_idempotent(*, key_id: int, idempotency_key: str, body: bytes) -> Replay | Proceed:
    """Own the key, or replay its stored response; a concurrent duplicate waits up to IDEMPOTENCY_WAIT_SECONDS.

    Raises InvalidIdempotencyKey (400), IdempotencyConflict (409: same key, different body) or
    IdempotencyInProgress (409: the first request is still running).
    """
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH or not idempotency_key.isprintable():
        raise InvalidIdempotencyKey(f"Invalid Idempotency-Key: it must be 1 to {MAX_KEY_LENGTH} printable characters.")
    digest = hashlib.sha256(body).hexdigest()
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    polls = 0
    while True:
        outcome = await run_db(
            claim_idempotency_key, key_id=key_id, idempotency_key=idempotency_key, body_sha256=digest
        )
        if not isinstance(outcome, _InProgress):
            return outcome
        pause = _POLL_SECONDS[min(polls, len(_POLL_SECONDS) - 1)]
        if time.monotonic() + pause > deadline:
            raise IdempotencyInProgress(
                f"A request with Idempotency-Key {idempotency_key!r} is still being processed. "
                "Retry after it has finished to get its response."
            )
        polls += 1
        await asyncio.sleep(pause)


def store_idempotent_response(*, record_id: int, status: int, headers: dict[str, str], body: bytes) -> None:
    IdempotentRequest.objects.filter(pk=record_id).update(
        state=IdempotentRequest.State.COMPLETED,
        response_status=status,
        response_headers=dict(headers),
        response_body=bytes(body),
        updated_at=timezone.now(),
    )


def release_idempotency_key(*, record_id: int) -> None:
    IdempotentRequest.objects.filter(pk=record_id, state=IdempotentRequest.State.IN_PROGRESS).delete()


async def complete_idempotent(proceed: Proceed, *, status: int, headers: dict[str, str], body: bytes) -> None:
    """Store the response that later requests with the same key and body get replayed."""
    await run_db(store_idempotent_response, record_id=proceed.record_id, status=status, headers=headers, body=body)


async def abandon_idempotent(proceed: Proceed) -> None:
    """Forget the key: the request failed before a response worth replaying (e.g. 429, 5xx)."""
    await run_db(release_idempotency_key, record_id=proceed.record_id)


def purge_expired_idempotent_requests() -> int:
    """Forget Idempotency-Keys older than IDEMPOTENCY_KEY_TTL_SECONDS."""
    cutoff = timezone.now() - dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    deleted, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return deleted
