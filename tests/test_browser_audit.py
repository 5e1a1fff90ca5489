"""The auditor's question in three clicks, in a real browser (Debian's headless Chromium) at 1280 px:
"which key of which user in which workspace spent how many messages on which model yesterday, and was
any request refused?"
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from accounts.models import Membership, User
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key
from billing.ledger import UsageRecord, record_usage
from billing.quotas import billing_day
from billing.rollups import rollup_daily_message_counts
from tests.support import make_user, record_limit_refusals
from tests.test_browser_keys import browser, screenshot_dir  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-password-1"


def used(user, key, request_id: str, *, model: str, day: dt.date, prompt: int = 10) -> None:
    record_usage(
        usage=UsageRecord(
            request_id=request_id,
            workspace_id=user.current_workspace_id,
            user_id=user.pk,
            key_id=key.pk,
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


def fits(driver, selector: str) -> bool:
    return driver.execute_script(
        "const t = document.querySelector(arguments[0]), box = t.parentElement;"
        "return box.scrollWidth <= box.clientWidth"
        " && t.getBoundingClientRect().right <= document.documentElement.clientWidth"
        " && document.documentElement.scrollWidth <= document.documentElement.clientWidth;",
        selector,
    )


def test_the_auditors_question_in_three_clicks(browser, live_server, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    alice = make_user("alice.long.address@example.com").user
    team = alice.current_workspace
    team.name = "Acme research and development"
    team.save(update_fields=["name"])
    bob = make_user("bob@example.com").user
    Membership.objects.create(user=bob, workspace=team, role=Membership.Role.MEMBER)
    bob.current_workspace = team
    bob.save(update_fields=["current_workspace"])
    laptop = DeveloperKey.objects.get(user=alice)
    laptop.name = "laptop"
    laptop.save(update_fields=["name"])
    ci = create_api_key(user=bob, name="ci runner").key
    yesterday = billing_day() - dt.timedelta(days=1)
    used(alice, laptop, "a1", model="anthropic/claude-sonnet-4.5", day=yesterday, prompt=40000)  # 3 messages
    used(bob, ci, "b1", model="openai/gpt-5-mini", day=yesterday)
    used(bob, ci, "b2", model="openai/gpt-5-mini", day=yesterday)
    used(bob, ci, "b-earlier", model="openai/gpt-5-mini", day=yesterday - dt.timedelta(days=1))
    rollup_daily_message_counts(days=[yesterday, yesterday - dt.timedelta(days=1)])
    at = dt.datetime.combine(yesterday, dt.time(12, 0), tzinfo=dt.UTC)
    record_limit_refusals(ci, workspace=team, day=yesterday, at=at, count=2, group="browser")
    User.objects.create_superuser("auditor@example.com", PASSWORD)

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("auditor@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda driver: "/admin/login/" not in driver.current_url)

    # Click 1: the daily counts by key and model.
    browser.find_element(By.LINK_TEXT, "Daily counts by key and model").click()
    WebDriverWait(browser, 10).until(lambda d: "/admin/billing/dailykeymodelcount/" in d.current_url)
    # Click 2: yesterday.
    browser.find_element(By.LINK_TEXT, "Yesterday").click()
    WebDriverWait(browser, 10).until(lambda d: "billing_day=yesterday" in d.current_url)

    rows = [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    ]
    by_user = {row[2]: row for row in rows}
    assert set(by_user) == {"alice.long.address@example.com", "bob@example.com"}
    alice_row, bob_row = by_user["alice.long.address@example.com"], by_user["bob@example.com"]
    assert alice_row[1] == "Acme research and development" and alice_row[3] == f"laptop ({laptop.masked})"
    assert alice_row[4:7] == ["anthropic/claude-sonnet-4.5", "3", "1"]  # model, messages, requests
    assert bob_row[3] == f"ci runner ({ci.masked})" and bob_row[4:7] == ["openai/gpt-5-mini", "2", "2"]
    assert (alice_row[-1], bob_row[-1]) == ("0", "2")  # refusals of each key that day
    totals = browser.find_element(By.CSS_SELECTOR, '[data-testid="totals"]').text
    assert "Messages: 5" in totals and "Requests: 3" in totals and "Refused (their keys): 2" in totals
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "admin-daily-by-key-and-model.png"))
    assert fits(browser, "#result_list"), "the list does not fit 1280 px"

    # Click 3: what was refused.
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr td:last-child a").click()
    WebDriverWait(browser, 10).until(lambda d: "/admin/billing/refusal/" in d.current_url)
    refusal = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr:first-child td")]
    assert refusal[:2] == ["429", "daily_limit_exceeded"] and "bob@example.com" in refusal
    assert refusal[-1] == "2"
    assert fits(browser, "#result_list")

    # The ledger's list fits too, with names.
    browser.get(f"{live_server.url}/admin/billing/usageevent/?billing_day=yesterday")
    assert "ci runner" in browser.find_element(By.ID, "result_list").text
    assert fits(browser, "#result_list"), "the ledger list does not fit 1280 px"
