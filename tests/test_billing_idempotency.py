"""Idempotency-Key: replays without a new charge, 409 for a different body, concurrent duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from django.utils import timezone

from billing.idempotency import (
    IdempotencyConflict,
    IdempotencyInProgress,
    InvalidIdempotencyKey,
    Proceed,
    Replay,
    abandon_idempotent,
    begin_idempotent,
    complete_idempotent,
    purge_expired_idempotent_requests,
)
from billing.models import IdempotentRequest
from billing.tasks import purge_idempotent_requests_task

TRANSACTIONAL = pytest.mark.django_db(transaction=True, serialized_rollback=True)
BODY = b'{"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]}'


@TRANSACTIONAL
def test_a_repeated_request_replays_the_stored_response() -> None:
    async def scenario():
        first = await begin_idempotent(key_id=1, idempotency_key="k-1", body=BODY)
        assert isinstance(first, Proceed)
        await complete_idempotent(first, status=200, headers={"content-type": "application/json"}, body=b'{"id": "x"}')
        return await begin_idempotent(key_id=1, idempotency_key="k-1", body=BODY)

    replay = asyncio.run(scenario())

    assert isinstance(replay, Replay)
    assert (replay.status, replay.body) == (200, b'{"id": "x"}')
    assert replay.headers == {"content-type": "application/json", "idempotent-replayed": "true"}


@TRANSACTIONAL
def test_the_same_key_with_a_different_body_is_a_409() -> None:
    async def scenario():
        first = await begin_idempotent(key_id=1, idempotency_key="k-2", body=BODY)
        await complete_idempotent(first, status=200, headers={}, body=b"{}")
        await begin_idempotent(key_id=1, idempotency_key="k-2", body=BODY + b" ")

    with pytest.raises(IdempotencyConflict) as caught:
        asyncio.run(scenario())
    assert caught.value.status == 409
    assert caught.value.body()["error"]["code"] == "idempotency_key_reused"
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


@TRANSACTIONAL
def test_keys_are_scoped_to_the_developer_key() -> None:
    async def scenario():
        first = await begin_idempotent(key_id=1, idempotency_key="shared", body=BODY)
        await complete_idempotent(first, status=200, headers={}, body=b"{}")
        return await begin_idempotent(key_id=2, idempotency_key="shared", body=b"another body")

    assert isinstance(asyncio.run(scenario()), Proceed)


@TRANSACTIONAL
def test_a_concurrent_duplicate_waits_for_the_first_and_gets_its_response() -> None:
    async def scenario():
        first = await begin_idempotent(key_id=1, idempotency_key="k-3", body=BODY)
        duplicate = asyncio.ensure_future(begin_idempotent(key_id=1, idempotency_key="k-3", body=BODY))
        await asyncio.sleep(0.15)
        assert not duplicate.done()
        await complete_idempotent(first, status=201, headers={}, body=b"done")
        return await duplicate

    replay = asyncio.run(scenario())
    assert isinstance(replay, Replay) and replay.body == b"done"


@TRANSACTIONAL
def test_many_concurrent_duplicates_let_exactly_one_request_run(settings) -> None:
    settings.IDEMPOTENCY_WAIT_SECONDS = 0.3

    async def scenario():
        return await asyncio.gather(
            *(begin_idempotent(key_id=1, idempotency_key="k-4", body=BODY) for _ in range(20)), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert sum(isinstance(o, Proceed) for o in outcomes) == 1
    assert all(isinstance(o, IdempotencyInProgress) for o in outcomes if not isinstance(o, Proceed))
    assert IdempotencyInProgress.status == 409


@TRANSACTIONAL
def test_an_abandoned_key_may_be_retried() -> None:
    async def scenario():
        first = await begin_idempotent(key_id=1, idempotency_key="k-5", body=BODY)
        await abandon_idempotent(first)
        return await begin_idempotent(key_id=1, idempotency_key="k-5", body=BODY)

    assert isinstance(asyncio.run(scenario()), Proceed)


@TRANSACTIONAL
def test_a_key_held_by_a_process_that_died_is_taken_over_after_its_lease(settings) -> None:
    settings.IDEMPOTENCY_WAIT_SECONDS = 0.1

    first = asyncio.run(begin_idempotent(key_id=1, idempotency_key="k-6", body=BODY))
    IdempotentRequest.objects.filter(pk=first.record_id).update(updated_at=timezone.now() - dt.timedelta(hours=1))

    assert isinstance(asyncio.run(begin_idempotent(key_id=1, idempotency_key="k-6", body=BODY)), Proceed)


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\nkey"])
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        asyncio.run(begin_idempotent(key_id=1, idempotency_key=key, body=BODY))


@TRANSACTIONAL
def test_keys_expire_after_their_ttl(settings) -> None:
    first = asyncio.run(begin_idempotent(key_id=1, idempotency_key="k-7", body=BODY))
    asyncio.run(complete_idempotent(first, status=200, headers={}, body=b"old"))
    IdempotentRequest.objects.update(
        created_at=timezone.now() - dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS + 1)
    )

    # An expired key starts afresh, even with another body.
    assert isinstance(asyncio.run(begin_idempotent(key_id=1, idempotency_key="k-7", body=b"new")), Proceed)
    IdempotentRequest.objects.update(created_at=timezone.now() - dt.timedelta(days=2))
    assert purge_idempotent_requests_task.delay().get() == 1
    assert purge_expired_idempotent_requests() == 0
