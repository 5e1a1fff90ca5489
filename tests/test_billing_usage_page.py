"""The usage page (server-rendered SVG, today's limits, breakdowns) and the billing admin."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.models import AppSumoLicence, AppSumoTier, Membership, Plan
from apikeys.models import DeveloperKey
from billing import quotas
from billing.ledger import UsageRecord, record_usage
from billing.models import UsageEvent
from billing.quotas import billing_day
from billing.rollups import rollup_daily_message_counts
from tests.support import make_user

PASSWORD = "a-long-password-1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(autouse=True)
def _fast_users(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()


def used(user, request_id: str, *, key_id=None, model="openai/gpt-5-mini", day=None, byok=False, prompt=10) -> None:
    record_usage(
        usage=UsageRecord(
            request_id=request_id,
            workspace_id=user.current_workspace_id,
            user_id=user.pk,
            key_id=key_id,
            model=model,
            endpoint="chat.completions",
            prompt_tokens=prompt,
            completion_tokens=5,
            cached_tokens=0,
            byok=byok,
            status="succeeded",
            latency_ms=10,
        ),
        day=day,
    )


@pytest.fixture
def busy_workspace(db):
    plan = Plan.objects.create(slug="twenty", name="Twenty", daily_message_limit=20)
    owner = make_user("owner@example.com", plan=plan.slug, password=PASSWORD).user
    key = DeveloperKey.objects.get(user=owner)
    member = make_user("member@example.com", password=PASSWORD).user
    Membership.objects.create(user=member, workspace=owner.current_workspace, role=Membership.Role.MEMBER)
    member.current_workspace = owner.current_workspace
    member.save(update_fields=["current_workspace"])
    member_key = DeveloperKey.objects.get(user=member)
    today = billing_day()
    used(owner, "t1", key_id=key.pk)
    used(owner, "t2", key_id=key.pk, model="anthropic/claude-sonnet-4.5", prompt=20000)  # 2 messages
    used(owner, "t3", key_id=key.pk, byok=True)
    used(member, "t4", key_id=member_key.pk)
    for days_ago in (1, 3, 29):
        used(owner, f"old{days_ago}", key_id=key.pk, day=today - dt.timedelta(days=days_ago))
    used(owner, "too-old", key_id=key.pk, day=today - dt.timedelta(days=30))
    rollup_daily_message_counts(days=[today - dt.timedelta(days=n) for n in range(31)])
    stranger = make_user("stranger@example.com", plan=plan.slug, password=PASSWORD).user
    used(stranger, "s1", model="secret/model")
    return owner, member, key, member_key


def test_the_usage_page_needs_a_login(client) -> None:
    response = client.get("/settings/usage/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_usage_page_charts_thirty_days_and_today_against_the_limit(client, busy_workspace) -> None:
    owner, _member, key, member_key = busy_workspace
    client.force_login(owner)

    response = client.get("/settings/usage/")

    assert response.status_code == 200
    html = response.content.decode()
    summary = response.context["summary"]
    assert [d.messages for d in summary.days][-4:] == [1, 0, 1, 4]
    assert summary.days[0].day == billing_day() - dt.timedelta(days=29) and summary.days[0].messages == 1
    assert (summary.used_today, summary.byok_today, summary.remaining_today) == (4, 1, 16)
    assert html.count('class="usage-chart__day"') == 30
    assert "<svg" in html and "<script" not in html.split("<main", 1)[1]
    assert 'data-testid="used-today">4<' in html and 'data-testid="remaining-today">16<' in html
    # Owners see every member's keys; models across the workspace, never another workspace's.
    assert f"{key.name} ({key.masked})" in html and member_key.masked in html
    assert "anthropic/claude-sonnet-4.5" in html and "secret/model" not in html


def test_members_see_their_own_keys_only(client, busy_workspace) -> None:
    _owner, member, key, member_key = busy_workspace
    client.force_login(member)
    html = client.get("/settings/usage/").content.decode()
    assert member_key.masked in html and key.masked not in html
    assert "Your own keys only." in html


def test_the_usage_page_shows_appsumo_caps(client, db) -> None:
    owner = make_user("sumo-page@example.com", password=PASSWORD).user
    tier = AppSumoTier.objects.create(slug="t-page", name="Page tier", daily_message_limit=7, monthly_message_limit=70)
    AppSumoLicence.objects.create(licence_key="LIC-PAGE", tier=tier, workspace=owner.current_workspace)
    used(owner, "p1")
    client.force_login(owner)
    summary = client.get("/settings/usage/").context["summary"]
    assert [(row.code, row.limit, row.used, row.remaining) for row in summary.limits] == [
        ("appsumo_daily_limit_exceeded", 7, 1, 6),
        ("appsumo_monthly_limit_exceeded", 70, 1, 69),
    ]


# ---- admin -------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client, db):
    from accounts.models import User

    admin = User.objects.create_superuser("staff@example.com", PASSWORD)
    client.force_login(admin)
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/admin/billing/usageevent/",
        "/admin/billing/usageevent/?byok__exact=1&status__exact=succeeded",
        "/admin/billing/dailymessagecount/",
        "/admin/billing/workspaceusage/",
    ],
)
def test_every_billing_changelist_loads(staff_client, busy_workspace, url: str) -> None:
    assert staff_client.get(url).status_code == 200


def test_usage_events_are_read_only_for_staff(staff_client, busy_workspace) -> None:
    event = UsageEvent.objects.first()
    assert staff_client.get("/admin/billing/usageevent/add/").status_code == 403
    page = staff_client.get(f"/admin/billing/usageevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert staff_client.post(f"/admin/billing/usageevent/{event.pk}/delete/").status_code == 403


def test_the_csv_export_follows_the_changelists_filters(staff_client, busy_workspace) -> None:
    owner, *_ = busy_workspace
    response = staff_client.get(
        f"/admin/billing/usageevent/export-csv/?workspace__id__exact={owner.current_workspace_id}&byok__exact=0"
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {row["request_id"] for row in rows} == {"t1", "t2", "t4", "old1", "old3", "old29", "too-old"}
    assert {row["byok"] for row in rows} == {"False"}
    assert b"export-csv/?" in staff_client.get("/admin/billing/usageevent/?byok__exact=0").content


def test_the_workspace_usage_page_shows_today_against_its_limits(staff_client, busy_workspace) -> None:
    owner, *_ = busy_workspace
    listing = staff_client.get("/admin/billing/workspaceusage/").content.decode()
    assert "Messages today" in listing
    page = staff_client.get(f"/admin/billing/workspaceusage/{owner.current_workspace_id}/change/").content.decode()
    assert "workspace daily message limit of the Twenty plan" in page
    assert "<td>20</td><td>4</td><td>16</td>" in page
    assert "member@example.com" in page


# ---- a real browser ----------------------------------------------------------------------------


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("Chromium or chromedriver is missing (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never download a browser or a driver
    profile = tempfile.mkdtemp(prefix="wm-usage-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1400")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_usage_chart_renders_in_a_real_browser(browser, live_server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    owner = make_user("chart@example.com", password=PASSWORD).user
    for i in range(3):
        used(owner, f"b{i}")
    used(owner, "b-yesterday", day=billing_day() - dt.timedelta(days=1))
    rollup_daily_message_counts()

    browser.get(f"{live_server.url}/login/")
    browser.find_element(By.NAME, "username").send_keys("chart@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    # The login page has an h1 too: wait until the sign-in has landed, not merely for a heading.
    WebDriverWait(browser, 10).until(lambda driver: "/login/" not in driver.current_url)
    browser.get(f"{live_server.url}/settings/usage/")

    assert browser.find_element(By.TAG_NAME, "h1").text == "Usage"
    days = browser.find_elements(By.CSS_SELECTOR, "svg.usage-chart g.usage-chart__day")
    assert len(days) == 30
    assert [d.get_attribute("data-messages") for d in days[-2:]] == ["1", "3"]
    chart = browser.find_element(By.CSS_SELECTOR, "svg.usage-chart")
    assert chart.size["width"] > 300 and chart.size["height"] > 80
    today_bar = days[-1].find_element(By.TAG_NAME, "rect")
    yesterday_bar = days[-2].find_element(By.TAG_NAME, "rect")
    assert today_bar.size["height"] > yesterday_bar.size["height"] * 2.5
    assert browser.find_element(By.CSS_SELECTOR, '[data-testid="used-today"]').text == "3"
    target = Path(os.environ.get("BROWSER_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(target / "usage-page.png"))
