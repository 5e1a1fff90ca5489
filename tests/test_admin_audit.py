"""The admin as an auditor needs it: nothing an audit needs can be deleted (issue 10 point 6), and the
auditor's question answered from lists with names, totals, a billing-day filter and refusals (issue 14
point 4)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import access
from accounts.models import Membership, User
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key
from billing import quotas
from billing.ledger import UsageRecord, record_usage
from billing.models import DailyKeyModelCount, DailyMessageCount, Refusal, UsageEvent
from billing.quotas import billing_day
from billing.refusals import flush_refusals_sync, note_refusal
from billing.rollups import rollup_daily_message_counts
from tests.support import make_user, record_limit_refusals

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()


@pytest.fixture
def staff(client):
    root = User.objects.create_superuser("auditor@example.com", "a-long-password-1")
    client.force_login(root)
    return client


def used(user, key, request_id: str, *, model: str = "openai/gpt-5-mini", day=None, prompt: int = 10) -> None:
    record_usage(
        usage=UsageRecord(
            request_id=request_id,
            workspace_id=user.current_workspace_id,
            user_id=user.pk,
            key_id=key.pk if key else None,
            model=model,
            endpoint="chat.completions",
            prompt_tokens=prompt,
            completion_tokens=5,
            cached_tokens=0,
            byok=False,
            status="succeeded",
            latency_ms=10,
        ),
        day=day,
    )


@pytest.fixture
def yesterday_usage():
    """Two users in one team workspace, two keys, two models, usage yesterday and today, and refusals."""
    alice = make_user("alice@example.com").user
    team = alice.current_workspace
    team.name = "Acme research"
    team.save(update_fields=["name"])
    bob = make_user("bob@example.com").user
    Membership.objects.create(user=bob, workspace=team, role=Membership.Role.MEMBER)
    bob.current_workspace = team
    bob.save(update_fields=["current_workspace"])
    alice_key = DeveloperKey.objects.get(user=alice)
    alice_key.name = "laptop"
    alice_key.save(update_fields=["name"])
    bob_key = create_api_key(user=bob, name="ci runner").key
    yesterday = billing_day() - dt.timedelta(days=1)
    used(alice, alice_key, "a1", day=yesterday)
    used(alice, alice_key, "a2", day=yesterday, model="anthropic/claude-sonnet-4.5", prompt=20000)  # 2 messages
    used(bob, bob_key, "b1", day=yesterday)
    used(bob, bob_key, "b2", day=yesterday)
    used(bob, bob_key, "b-today")
    rollup_daily_message_counts(days=[yesterday, billing_day()])
    # Refusals: Bob's key hit the limit 3 times yesterday; an unknown key once.
    at = timezone.now() - dt.timedelta(days=1)
    record_limit_refusals(bob_key, workspace=team, day=yesterday, at=at, count=3, group="g1")
    return {"alice": alice, "bob": bob, "team": team, "alice_key": alice_key, "bob_key": bob_key, "day": yesterday}


# ---- nothing an audit needs can be deleted -------------------------------------------------------


def test_keys_users_workspaces_and_records_cannot_be_deleted_from_the_admin(staff, yesterday_usage):
    flush_refusals_sync()
    objects = [
        yesterday_usage["bob_key"],
        yesterday_usage["bob"],
        yesterday_usage["team"],
        UsageEvent.objects.first(),
        DailyMessageCount.objects.first(),
        DailyKeyModelCount.objects.first(),
        Refusal.objects.first(),
    ]
    for obj in objects:
        opts = obj._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[obj.pk])
        assert staff.get(url).status_code == 403, url
        assert staff.post(url, {"post": "yes"}).status_code == 403, url
        assert type(obj).objects.filter(pk=obj.pk).exists()
        changelist = staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert b'value="delete_selected"' not in changelist.content, opts.model_name
    for model in (UsageEvent, DailyMessageCount, DailyKeyModelCount, Refusal):
        opts = model._meta
        assert staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_add")).status_code == 403


def test_a_bulk_delete_action_is_refused_too(staff, yesterday_usage):
    key = yesterday_usage["bob_key"]
    response = staff.post(
        reverse("admin:apikeys_developerkey_changelist"),
        {"action": "delete_selected", "_selected_action": [key.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert DeveloperKey.objects.filter(pk=key.pk).exists()


def test_deactivating_a_user_and_a_workspace_keeps_their_records_and_stops_the_api(
    staff, yesterday_usage, django_capture_on_commit_callbacks
):
    bob, team = yesterday_usage["bob"], yesterday_usage["team"]
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            reverse("admin:accounts_user_changelist"),
            {"action": "deactivate_selected", "_selected_action": [bob.pk]},
            follow=True,
        )
    assert b"Deactivated 1 user(s)." in response.content
    bob.refresh_from_db()
    assert not bob.is_active and access.load_user_access(user_id=bob.pk) is None

    alice = yesterday_usage["alice"]
    assert team.pk in access.load_user_access(user_id=alice.pk).workspaces
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            reverse("admin:accounts_workspace_changelist"),
            {"action": "deactivate_selected", "_selected_action": [team.pk]},
            follow=True,
        )
    assert b"Deactivated 1 workspace(s)." in response.content
    team.refresh_from_db()
    assert team.deactivated_at is not None
    assert team.pk not in access.load_user_access(user_id=alice.pk).workspaces
    assert UsageEvent.objects.filter(workspace_id=team.pk).count() == 5
    listed = staff.get(reverse("admin:accounts_workspace_changelist"), {"status": "deactivated"})
    assert [w.pk for w in listed.context["cl"].result_list] == [team.pk]

    with django_capture_on_commit_callbacks(execute=True):
        staff.post(
            reverse("admin:accounts_workspace_changelist"),
            {"action": "reactivate_selected", "_selected_action": [team.pk]},
        )
    assert team.pk in access.load_user_access(user_id=alice.pk).workspaces


def test_the_admin_never_removes_a_workspaces_last_owner(staff, yesterday_usage):
    team, alice, bob = yesterday_usage["team"], yesterday_usage["alice"], yesterday_usage["bob"]
    owner = Membership.objects.get(workspace=team, user=alice)
    assert owner.role == Membership.Role.OWNER

    # The delete page, the bulk action, a role change and the workspace's inline all refuse.
    staff.post(reverse("admin:accounts_membership_delete", args=[owner.pk]), {"post": "yes"})
    staff.post(
        reverse("admin:accounts_membership_changelist"),
        {"action": "delete_selected", "_selected_action": [owner.pk], "post": "yes"},
    )
    demoted = staff.post(
        reverse("admin:accounts_membership_change", args=[owner.pk]),
        {"user": alice.pk, "workspace": team.pk, "role": Membership.Role.MEMBER},
    )
    assert demoted.status_code == 200 and b"at least one owner" in demoted.content
    memberships = list(Membership.objects.filter(workspace=team).order_by("id"))
    inline = {
        "name": team.name,
        "plan": team.plan_id,
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(len(memberships)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for index, membership in enumerate(memberships):
        inline |= {
            f"memberships-{index}-id": membership.pk,
            f"memberships-{index}-workspace": team.pk,
            f"memberships-{index}-user": membership.user_id,
            f"memberships-{index}-role": membership.role,
        }
    owner_index = memberships.index(owner)
    refused = staff.post(
        reverse("admin:accounts_workspace_change", args=[team.pk]),
        {**inline, f"memberships-{owner_index}-DELETE": "on"},
    )
    assert refused.status_code == 200 and b"at least one owner" in refused.content
    owner.refresh_from_db()
    assert owner.role == Membership.Role.OWNER

    # With a second owner, the first may go.
    bob_membership = Membership.objects.get(workspace=team, user=bob)
    bob_membership.role = Membership.Role.OWNER
    bob_membership.save(update_fields=["role"])
    response = staff.post(reverse("admin:accounts_membership_delete", args=[owner.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=owner.pk).exists()


# ---- the auditor's question --------------------------------------------------------------------


def test_daily_counts_by_key_and_model_answer_the_auditors_question(staff, yesterday_usage):
    url = reverse("admin:billing_dailykeymodelcount_changelist")
    page = staff.get(url, {"billing_day": "yesterday"})
    html = page.content.decode()
    rows = page.context["cl"].result_list
    assert {(r.user.email, r.workspace.name, r.key.name, r.model, r.count, r.requests) for r in rows} == {
        ("alice@example.com", "Acme research", "laptop", "openai/gpt-5-mini", 1, 1),
        ("alice@example.com", "Acme research", "laptop", "anthropic/claude-sonnet-4.5", 2, 1),
        ("bob@example.com", "Acme research", "ci runner", "openai/gpt-5-mini", 2, 2),
    }
    bob_key = yesterday_usage["bob_key"]
    assert f"ci runner ({bob_key.masked})" in html and "bob@example.com" in html and "Acme research" in html
    totals = dict(page.context_data["totals"])
    assert (totals["Messages"], totals["Requests"], totals["Refused (their keys)"]) == (5, 4, 3)
    assert totals["Input tokens"] == 20030 and totals["Output tokens"] == 20
    # The refusals of Bob's key that day sit beside its usage, linked to them.
    refusals = staff.get(
        reverse("admin:billing_refusal_changelist"), {"key__id__exact": bob_key.pk, "day": yesterday_usage["day"]}
    )
    assert f"?key__id__exact={bob_key.pk}&amp;day={yesterday_usage['day']}" in html
    assert [(r.code, r.count) for r in refusals.context["cl"].result_list] == [("daily_limit_exceeded", 3)]

    def found(term: str) -> set[str]:
        return {r.user.email for r in staff.get(url, {"q": term}).context["cl"].result_list}

    assert found("bob@example.com") == {"bob@example.com"}
    assert found("laptop") == {"alice@example.com"}
    assert found(bob_key.prefix) == {"bob@example.com"}
    assert found(bob_key.masked) == {"bob@example.com"}
    assert found("Acme") == {"alice@example.com", "bob@example.com"}


def test_the_ledger_lists_names_filters_by_billing_day_and_exports_names(staff, yesterday_usage):
    url = reverse("admin:billing_usageevent_changelist")
    page = staff.get(url, {"billing_day": "yesterday"})
    assert {e.request_id for e in page.context["cl"].result_list} == {"a1", "a2", "b1", "b2"}
    html = page.content.decode()
    assert "alice@example.com" in html and "laptop (" in html and "Acme research" in html
    totals = dict(page.context_data["totals"])
    assert (totals["Messages"], totals["Requests"], totals["Input tokens"], totals["Output tokens"]) == (
        5,
        4,
        20030,
        20,
    )
    day = yesterday_usage["day"]
    drilled = staff.get(url, {"day__year": day.year, "day__month": day.month, "day__day": day.day})
    assert {e.request_id for e in drilled.context["cl"].result_list} == {"a1", "a2", "b1", "b2"}

    export = staff.get(reverse("admin:billing_usageevent_export_csv"), {"billing_day": "yesterday", "q": "bob"})
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert {(r["request_id"], r["user"], r["workspace"], r["key_name"], r["key_prefix"]) for r in rows} == {
        ("b1", "bob@example.com", "Acme research", "ci runner", yesterday_usage["bob_key"].prefix),
        ("b2", "bob@example.com", "Acme research", "ci runner", yesterday_usage["bob_key"].prefix),
    }


def test_the_refusal_record_lists_names_and_filters(staff, yesterday_usage):
    note_refusal(
        status=401, code="invalid_api_key", endpoint="chat.completions", address="10.0.0.9", key_prefix="wmk_zzzzzz"
    )
    flush_refusals_sync()
    url = reverse("admin:billing_refusal_changelist")
    page = staff.get(url)
    html = page.content.decode()
    assert "wmk_zzzzzz… (unknown)" in html and "bob@example.com" in html and "ci runner" in html
    assert dict(page.context_data["totals"])["Refused requests"] == 4
    only_401 = staff.get(url, {"status__exact": 401})
    assert [r.code for r in only_401.context["cl"].result_list] == ["invalid_api_key"]
    assert [r.count for r in staff.get(url, {"q": "10.0.0.7"}).context["cl"].result_list] == [3]


@pytest.mark.parametrize(
    "name", ["billing_usageevent", "billing_dailykeymodelcount", "billing_dailymessagecount", "billing_refusal"]
)
def test_audit_lists_cost_the_same_queries_for_ten_rows_or_fifty(
    staff, yesterday_usage, name, django_assert_num_queries
):
    url = reverse(f"admin:{name}_changelist")
    staff.get(url)  # warm the session and the content types

    def queries() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            assert staff.get(url).status_code == 200
        return len(captured)

    few = queries()
    alice, key = yesterday_usage["alice"], yesterday_usage["alice_key"]
    day = yesterday_usage["day"]
    for i in range(50):
        other = create_api_key(user=alice, name=f"key {i}").key if i % 5 == 0 else key
        used(alice, other, f"many{i}", day=day, model=f"vendor/model-{i % 7}")
    rollup_daily_message_counts(days=[day])
    for i in range(20):
        note_refusal(status=400, code=f"bad_{i}", endpoint="chat.completions", address=f"10.1.0.{i}")
    flush_refusals_sync()
    assert queries() == few
    assert few <= 16, few  # session, user, filters, page, count, three prefetches, totals


def test_the_audit_checks_the_breakdown_by_key_and_model_too(yesterday_usage):
    from billing.rollups import audit_daily_message_counts

    assert audit_daily_message_counts().ok
    row = DailyKeyModelCount.objects.get(key=yesterday_usage["bob_key"], day=yesterday_usage["day"])
    row.count += 1
    row.save(update_fields=["count"])
    result = audit_daily_message_counts()
    assert not result.ok and "daily_key_model_count" in result.mismatches[0]
    rollup_daily_message_counts(days=[yesterday_usage["day"]])
    assert audit_daily_message_counts().ok
