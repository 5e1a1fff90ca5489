"""The usage page a user reads (issue 14 point 5): any of their workspaces, 7 / 30 / 90 days or a range, by day
and model and by key, refused and failed requests with their reasons, CSV of what is shown, what happens
at the limit, plurals, and a chart that stays legible on a 390 px phone."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Plan
from apikeys.models import DeveloperKey
from billing import quotas
from billing.ledger import UsageRecord, record_usage
from billing.models import Refusal
from billing.quotas import billing_day
from billing.rollups import rollup_daily_message_counts
from tests.support import make_user
from tests.test_browser_keys import browser, screenshot_dir  # noqa: F401 (the fixture)

PASSWORD = "a-long-password-1"


@pytest.fixture(autouse=True)
def _fast(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()


def used(user, request_id, *, workspace_id=None, key=None, model="openai/gpt-5-mini", day=None, status="succeeded"):
    record_usage(
        usage=UsageRecord(
            request_id=request_id,
            workspace_id=workspace_id or user.current_workspace_id,
            user_id=user.pk,
            key_id=key.pk if key else None,
            model=model,
            endpoint="chat.completions",
            prompt_tokens=10,
            completion_tokens=5 if status == "succeeded" else 0,
            cached_tokens=0,
            byok=False,
            status=status,
            latency_ms=10,
        ),
        day=day,
    )


def refused(
    user, *, code="daily_limit_exceeded", status=429, count=2, day=None, message="You have used all 2."
) -> None:
    at = timezone.now()
    Refusal.objects.create(
        minute=at.replace(second=0, microsecond=0),
        day=day or billing_day(),
        status=status,
        code=code,
        endpoint="chat.completions",
        user=user,
        workspace_id=user.current_workspace_id,
        model="openai/gpt-5-mini",
        address="127.0.0.1",
        message=message,
        count=count,
        first_at=at,
        last_at=at,
        group=f"{code}-{day}",
    )


@pytest.fixture
def two_workspaces(db):
    Plan.objects.create(slug="two", name="Two", daily_message_limit=2, allowed_model_tiers=["basic"])
    owner = make_user("ranges@example.com", plan="two", password=PASSWORD).user
    key = DeveloperKey.objects.get(user=owner)
    side = account_services.create_workspace(user=owner, name="Side project")
    today = billing_day()
    used(owner, "t1", key=key)
    used(owner, "t2", key=key, model="anthropic/claude-sonnet-4.5")
    used(owner, "t-fail", key=key, status="failed")
    used(owner, "d10", key=key, day=today - dt.timedelta(days=10))
    used(owner, "d60", key=key, day=today - dt.timedelta(days=60), model="vendor/old")
    used(owner, "side1", workspace_id=side.pk, model="vendor/side")
    rollup_daily_message_counts(days=[today - dt.timedelta(days=n) for n in (0, 10, 60)])
    refused(owner)
    refused(owner, code="model_not_allowed", status=403, count=1, day=today - dt.timedelta(days=10), message="No.")
    return owner, key, side


def test_ranges_switch_workspaces_and_break_usage_down(client, two_workspaces) -> None:
    owner, _key, side = two_workspaces
    client.force_login(owner)

    default = client.get("/settings/usage/").context["summary"]
    assert default.span.days == 30 and len(default.days) == 30
    assert {r.model for r in default.by_day_model} == {"openai/gpt-5-mini", "anthropic/claude-sonnet-4.5"}
    week = client.get("/settings/usage/", {"days": 7}).context["summary"]
    assert len(week.days) == 7 and sum(d.messages for d in week.days) == 2
    quarter = client.get("/settings/usage/", {"days": 90}).context["summary"]
    assert len(quarter.days) == 90 and "vendor/old" in {r.label for r in quarter.by_model}
    today = billing_day()
    start, end = today - dt.timedelta(days=12), today - dt.timedelta(days=9)
    custom = client.get("/settings/usage/", {"start": start.isoformat(), "end": end.isoformat()}).context["summary"]
    assert (custom.span.first, custom.span.last, custom.span.preset) == (start, end, None)
    assert [(r.day, r.model, r.messages) for r in custom.by_day_model] == [
        (today - dt.timedelta(days=10), "openai/gpt-5-mini", 1)
    ]
    assert [(r.code, r.count) for r in custom.refusals] == [("model_not_allowed", 1)]

    backwards = client.get("/settings/usage/", {"start": end.isoformat(), "end": start.isoformat()})
    assert b"must not be after" in backwards.content and backwards.context["summary"].span.days == 30

    html = client.get("/settings/usage/", {"workspace": side.pk}).content.decode()
    assert "Side project" in html and "vendor/side" in html and "anthropic/claude-sonnet-4.5" not in html
    assert 'name="workspace"' in html and "<option" in html
    stranger = make_user("nosy@example.com").user
    assert client.get("/settings/usage/", {"workspace": stranger.current_workspace_id}).status_code == 404


def test_refused_and_failed_requests_and_the_limit_are_explained(client, two_workspaces) -> None:
    owner, _key, _side = two_workspaces
    client.force_login(owner)
    response = client.get("/settings/usage/")
    html = response.content.decode()
    summary = response.context["summary"]

    assert [(r.status, r.code, r.count) for r in summary.refusals] == [
        (429, "daily_limit_exceeded", 2),
        (403, "model_not_allowed", 1),
    ]
    assert summary.failures == (("Failed upstream", 1),)
    at_limit = html.split('data-testid="at-limit"', 1)[1].split("</div>", 1)[0]
    assert "2 requests (daily_limit_exceeded)" in at_limit
    assert "It resets at" in at_limit and summary.exhausted_limits[0].resets_at.strftime("%Y-%m-%d %H:%M") in at_limit
    assert "bigger plan" in at_limit and "own OpenRouter key" in at_limit
    assert "1 × failed upstream" in html
    assert "3 requests refused" in html  # over the 30 days shown


def test_plurals_are_right(client, db) -> None:
    single = make_user("single@example.com", password=PASSWORD).user
    used(single, "only")
    client.force_login(single)
    html = client.get("/settings/usage/", {"days": 7}).content.decode()
    assert "1 message in 7 days" in html and "1 messages" not in html


def test_the_csv_has_what_the_page_shows(client, two_workspaces) -> None:
    owner, key, _side = two_workspaces
    client.force_login(owner)
    response = client.get("/settings/usage/", {"days": 30, "format": "csv"})
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    by_table: dict[str, list[dict]] = {}
    for row in rows:
        by_table.setdefault(row["table"], []).append(row)
    assert {(r["model"], r["messages"], r["failed"]) for r in by_table["by_day_and_model"]} == {
        ("openai/gpt-5-mini", "1", "1"),
        ("anthropic/claude-sonnet-4.5", "1", "0"),
        ("openai/gpt-5-mini", "1", "0"),
    }
    assert [r["key"] for r in by_table["by_key"]] == [f"{key.name} ({key.masked})"]
    assert {(r["code"], r["refused"]) for r in by_table["refused"]} == {
        ("daily_limit_exceeded", "2"),
        ("model_not_allowed", "1"),
    }


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_usage_page_reads_on_a_390_px_phone(browser, live_server, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    phone = make_user("phone@example.com", password=PASSWORD).user
    for days_ago in range(0, 90, 3):
        used(phone, f"p{days_ago}", day=billing_day() - dt.timedelta(days=days_ago))
    rollup_daily_message_counts(days=[billing_day() - dt.timedelta(days=n) for n in range(90)])

    browser.set_window_size(390, 900)
    browser.get(f"{live_server.url}/login/")
    browser.find_element(By.NAME, "username").send_keys("phone@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda driver: "/login/" not in driver.current_url)
    browser.get(f"{live_server.url}/settings/usage/?days=90")

    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.usage-chart g.usage-chart__day")) == 90
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    # Labels stay legible: each day label is drawn at least 9 px tall.
    heights = browser.execute_script(
        "return [...document.querySelectorAll('svg.usage-chart text')].map(t => t.getBoundingClientRect().height)"
    )
    assert heights and min(heights) >= 9, heights
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "usage-390.png"))
