"""The ledger: group-committed writes that survive a database outage, idempotent roll-ups, the audit."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connections

from billing import ledger, quotas, recording, rollups
from billing.ledger import UsageRecord, drain_ledger_spool, record_usage
from billing.models import DailyMessageCount, UsageEvent
from billing.quotas import Reservation, billing_day
from billing.recording import finish_request
from billing.rollups import audit_daily_message_counts, rollup_daily_message_counts
from billing.tasks import rollup_daily_message_counts_task
from tests.support import make_user
from tests.support import run_async as run
from writingmate.redis_connection import sync_redis

TRANSACTIONAL = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture(autouse=True)
def _fast_users(settings) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()
    yield
    quotas.reset_quota_state()


def record(user, request_id: str, *, prompt: int = 10, completion: int = 5, byok: bool = False, **kw) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        workspace_id=user.current_workspace_id,
        user_id=user.pk,
        key_id=kw.pop("key_id", None),
        model=kw.pop("model", "openai/gpt-5-mini"),
        endpoint="chat.completions",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=kw.pop("cached", 0),
        byok=byok,
        status=kw.pop("status", "succeeded"),
        latency_ms=20,
        **kw,
    )


def reservation_for(user, request_id: str) -> Reservation:
    budget = quotas.Budget(limit=None, remaining=None, reset_at=quotas.day_start(billing_day() + dt.timedelta(days=1)))
    return Reservation(request_id, user.current_workspace_id, user.pk, False, budget, billing_day())


@pytest.fixture
def ledger_writes(monkeypatch) -> list[int]:
    """The size of each batch written to the ledger, in order."""
    calls: list[int] = []
    original = recording.run_db

    async def counting_run_db(fn, /, *args, **kwargs):
        if fn is ledger.write_ledger_entries_isolating:
            calls.append(len(kwargs["entries"]))
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(recording, "run_db", counting_run_db)
    return calls


@TRANSACTIONAL
def test_concurrent_finishes_share_database_round_trips_and_each_waits_for_its_own_line(ledger_writes) -> None:
    user = make_user("batch@example.com").user

    async def scenario():
        return await asyncio.gather(
            *(
                finish_request(reservation=reservation_for(user, f"req_{i}"), usage=record(user, f"req_{i}"))
                for i in range(200)
            )
        )

    counted = run(scenario())

    assert counted == [1] * 200
    assert UsageEvent.objects.count() == 200
    assert sum(ledger_writes) == 200
    assert len(ledger_writes) <= 4, ledger_writes  # the first request alone, then the rest in a batch or two


@TRANSACTIONAL
def test_back_to_back_requests_of_one_client_share_one_write_within_the_linger(ledger_writes, settings) -> None:
    settings.BILLING_LEDGER_LINGER_SECONDS = 0.3
    user = make_user("linger@example.com").user

    async def one_after_another():
        finishing = []
        for i in range(3):
            finishing.append(
                asyncio.ensure_future(
                    finish_request(reservation=reservation_for(user, f"req_l{i}"), usage=record(user, f"req_l{i}"))
                )
            )
            await asyncio.sleep(0.01)  # the next request of a client that waits for each answer
        assert not any(f.done() for f in finishing), "a line was reported durable before it was written"
        return await asyncio.gather(*finishing)

    assert run(one_after_another()) == [1, 1, 1]
    assert ledger_writes == [3]
    assert UsageEvent.objects.filter(request_id__startswith="req_l").count() == 3


@TRANSACTIONAL
def test_a_database_outage_is_retried_until_the_line_is_durable(monkeypatch, caplog) -> None:
    user = make_user("outage@example.com").user
    failures = iter([True, True, False])
    original = ledger.write_ledger_entries_isolating

    def flaky(**kwargs):
        if next(failures):
            raise OperationalError("server closed the connection unexpectedly")
        return original(**kwargs)

    monkeypatch.setattr(recording, "write_ledger_entries_isolating", flaky)

    counted = run(finish_request(reservation=reservation_for(user, "req_retry"), usage=record(user, "req_retry")))

    assert counted == 1
    assert UsageEvent.objects.get().request_id == "req_retry"
    assert "could not write 1 usage events (attempt 1)" in caplog.text


@pytest.mark.redis
@TRANSACTIONAL
def test_events_the_database_would_not_take_are_spooled_and_replayed(monkeypatch, settings, caplog) -> None:
    settings.BILLING_LEDGER_RETRY_SECONDS = 0.1
    user = make_user("spool@example.com").user

    def down(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(recording, "write_ledger_entries_isolating", down)
    counted = run(finish_request(reservation=reservation_for(user, "req_spool"), usage=record(user, "req_spool")))

    assert counted == 1
    assert UsageEvent.objects.count() == 0
    assert "spooled to Redis" in caplog.text
    assert sync_redis().llen(ledger.LEDGER_SPOOL_KEY) == 1

    rollup_daily_message_counts_task.delay()

    assert UsageEvent.objects.get().request_id == "req_spool"
    assert DailyMessageCount.objects.get().count == 1
    assert drain_ledger_spool() == []


@TRANSACTIONAL
def test_without_redis_or_database_the_event_itself_is_logged_for_replay(monkeypatch, settings, caplog) -> None:
    settings.BILLING_LEDGER_RETRY_SECONDS = 0.1
    settings.REDIS_URL = ""
    user = make_user("lost@example.com").user

    def down(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(recording, "write_ledger_entries_isolating", down)
    assert run(finish_request(reservation=reservation_for(user, "req_lost"), usage=record(user, "req_lost"))) == 1
    assert "UNRECORDED usage event" in caplog.text and "req_lost" in caplog.text


@pytest.mark.django_db
def test_the_rollup_recomputes_from_events_and_running_it_twice_changes_nothing() -> None:
    user = make_user("rollup@example.com").user
    other = make_user("other@example.com").user
    today = billing_day()
    yesterday = today - dt.timedelta(days=1)
    record_usage(usage=record(user, "a", prompt=20000, completion=15000, cached=8000))  # 2 messages
    record_usage(usage=record(user, "b"))
    record_usage(usage=record(user, "c", byok=True, prompt=40000, completion=0))  # 3 BYOK messages
    record_usage(usage=record(user, "d", status="failed", completion=0))  # 0 messages, still a request
    record_usage(usage=record(user, "e"), day=yesterday)
    record_usage(usage=record(other, "f"))

    def rows() -> list[dict]:
        return list(DailyMessageCount.objects.order_by("id").values(*rollups._FIGURES, "id", "day", "workspace_id"))

    first = rollup_daily_message_counts()
    after_first = rows()
    second = rollup_daily_message_counts()

    assert first.rows == second.rows == 3
    assert rows() == after_first
    mine = DailyMessageCount.objects.get(workspace_id=user.current_workspace_id, day=today)
    assert (mine.count, mine.byok_count, mine.requests) == (3, 3, 4)
    assert (mine.input_tokens, mine.output_tokens, mine.cached_tokens) == (20000 + 10 + 40000 + 10, 15000 + 5, 8000)
    assert DailyMessageCount.objects.get(workspace_id=user.current_workspace_id, day=yesterday).count == 1
    assert DailyMessageCount.objects.get(workspace_id=other.current_workspace_id).count == 1
    assert audit_daily_message_counts(include_today=True).ok


@pytest.mark.django_db
def test_the_launch_posts_example_lands_in_daily_message_count_with_its_tokens() -> None:
    user = make_user("launch@example.com").user
    record_usage(usage=record(user, "req_launch", prompt=10, completion=5))
    rollup_daily_message_counts()
    row = DailyMessageCount.objects.get()
    assert (row.count, row.input_tokens, row.output_tokens) == (1, 10, 5)


@pytest.mark.postgres  # SQLite's in-memory test database refuses concurrent writers outright
@TRANSACTIONAL
def test_concurrent_rollups_agree_with_the_ledger() -> None:
    user = make_user("together@example.com").user
    for i in range(30):
        record_usage(usage=record(user, f"r{i}"))
    errors: list[BaseException] = []

    def roll() -> None:
        try:
            rollup_daily_message_counts()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=roll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(30, 40):
        record_usage(usage=record(user, f"r{i}"))
    for thread in threads:
        thread.join()
    rollup_daily_message_counts()

    assert errors == []
    assert DailyMessageCount.objects.get().count == 40
    assert audit_daily_message_counts(include_today=True).ok


@pytest.mark.django_db
def test_the_audit_command_reports_a_mismatch_and_fails(capsys) -> None:
    user = make_user("audit@example.com").user
    yesterday = billing_day() - dt.timedelta(days=1)
    record_usage(usage=record(user, "x"), day=yesterday)
    record_usage(usage=record(user, "y"), day=yesterday)

    call_command("rollup_usage", "--days", "2")
    assert "rolled up 2 days into 1 daily_message_count rows" in capsys.readouterr().out
    call_command("audit_usage")
    assert "audited 1 days, 1 daily_message_count rows: 0 mismatches" in capsys.readouterr().out

    DailyMessageCount.objects.update(count=7)
    with pytest.raises(CommandError, match="1 mismatches"):
        call_command("audit_usage")
    assert "ledger {'count': 2" in capsys.readouterr().err

    call_command("rollup_usage", "--all")
    call_command("audit_usage")


@pytest.mark.django_db
def test_the_audit_notices_a_day_that_was_never_rolled_up() -> None:
    user = make_user("never@example.com").user
    record_usage(usage=record(user, "z"), day=billing_day() - dt.timedelta(days=3))
    result = audit_daily_message_counts()
    assert not result.ok
    assert "missing" in result.mismatches[0]


@pytest.mark.django_db
def test_absurd_usage_numbers_are_recorded_without_overflowing() -> None:
    user = make_user("absurd@example.com").user
    counted = record_usage(usage=record(user, "huge", prompt=10**15, completion=-7, cached=10**16))
    event = UsageEvent.objects.get()
    assert (event.prompt_tokens, event.completion_tokens, event.counted_messages) == (10**15, 0, counted)


@TRANSACTIONAL
def test_a_line_the_database_rejects_does_not_take_its_batch_down(caplog) -> None:
    user = make_user("poison@example.com").user

    async def scenario():
        good = [
            finish_request(reservation=reservation_for(user, f"ok_{i}"), usage=record(user, f"ok_{i}"))
            for i in range(5)
        ]
        bad = finish_request(reservation=reservation_for(user, "bad"), usage=record(user, "bad", key_id=2**70))
        return await asyncio.gather(*good, bad, *good[:0])

    assert run(scenario()) == [1] * 6
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == [f"ok_{i}" for i in range(5)]
    assert "the database rejects usage event" in caplog.text and '"request_id": "bad"' in caplog.text
    # NUL characters in a model name are dropped rather than making the line unwritable.
    record_usage(usage=record(user, "nul", model="evil\x00model"))
    assert UsageEvent.objects.get(request_id="nul").model == "evilmodel"
