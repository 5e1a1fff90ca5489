"""Every page of the site and of the admin, in headless Chromium at 1280 px and at 390 px (a phone):
no axe-core violation, and nothing scrolls sideways on the phone.

The pages are not listed by hand: the site's URL patterns and the admin's registered models are
enumerated, so a new page is audited as soon as it exists. A pattern with a URL argument this test
cannot fill, or an admin model with no row to open, fails the test until it learns one.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import services as account_services
from accounts.models import AppSumoLicence, AppSumoTier, Membership, User
from apikeys.services import create_api_key, revoke_api_key
from billing.refusals import flush_refusals_sync
from billing.rollups import rollup_daily_message_counts
from tests.browser_support import (
    axe_core_source,
    boxes_scrolling_sideways,
    chromium,
    elements_past_right_edge,
    horizontal_overflow,
    run_axe,
    set_viewport,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

WIDTHS = (1280, 390)
PASSWORD = "a-long-password-1"
# What is not a site page: the API surfaces and the admin (audited from its registry) by path prefix,
# probes, the metrics endpoint and logout by name.
NOT_PAGE_PREFIXES = ("admin/", "api/", "v1/")
NOT_PAGE_NAMES = ("healthz", "readyz", "metrics", "logout")


@dataclass(frozen=True)
class Page:
    label: str
    path: str
    # For a page that is a POST's answer (the one-time key reveal, a form with errors): what to do
    # on `path` to get there.
    then: Callable[[Any], None] | None = None


def submit_form(button_text: str, fields: dict[str, str] | None = None) -> Callable[[Any], None]:
    def act(driver: Any) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.wait import WebDriverWait

        for name, value in (fields or {}).items():
            driver.find_element(By.NAME, name).send_keys(value)
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.XPATH, f"//main//button[normalize-space()='{button_text}']").click()
        WebDriverWait(driver, 10).until(lambda d: old.id != d.find_element(By.TAG_NAME, "html").id)
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")

    return act


def site_patterns() -> list[tuple[str, list[str]]]:
    """(URL name, its argument names) for every named site pattern outside the API and the admin."""
    found: list[tuple[str, list[str]]] = []

    def walk(patterns: list, namespace: str | None) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if str(entry.pattern).startswith(NOT_PAGE_PREFIXES):
                    continue
                walk(entry.url_patterns, entry.namespace or namespace)
            elif isinstance(entry, URLPattern):
                view_class = getattr(entry.callback, "view_class", None)
                if not entry.name or entry.name in NOT_PAGE_NAMES or (view_class and not hasattr(view_class, "get")):
                    continue  # unnamed, not a page, or POST-only
                name = f"{namespace}:{entry.name}" if namespace else entry.name
                found.append((name, list(entry.pattern.regex.groupindex)))

    walk(get_resolver().url_patterns, None)
    return found


def fill(name: str, argument_names: list[str], values: dict[str, Any]) -> str:
    """The URL of `name` with its arguments from `values` ("name.argument" wins over "argument")."""
    chosen = {argument: values.get(f"{name}.{argument}", values.get(argument)) for argument in argument_names}
    missing = [argument for argument, value in chosen.items() if value is None]
    assert not missing, f"teach this test a value for {missing} (URL {name!r})"
    return reverse(name, kwargs=chosen)


def admin_pages(superuser: User) -> list[Page]:
    """The index, each app index, and for every registered model its changelist, add form and a change form."""
    request = type("Request", (), {"user": superuser})()
    pages = [Page("admin index", reverse("admin:index"))]
    apps: set[str] = set()
    problems = []
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        opts = f"{meta.app_label}_{meta.model_name}"
        if meta.app_label not in apps:
            apps.add(meta.app_label)
            pages.append(Page(f"admin {meta.app_label}", reverse("admin:app_list", args=[meta.app_label])))
        pages.append(Page(f"admin {opts} list", reverse(f"admin:{opts}_changelist")))
        if model_admin.has_add_permission(request):
            pages.append(Page(f"admin {opts} add", reverse(f"admin:{opts}_add")))
        instance = model_admin.get_queryset(request).first()
        if instance is None:
            problems.append(opts)
            continue
        pages.append(Page(f"admin {opts} change", reverse(f"admin:{opts}_change", args=[quote(instance.pk)])))
    assert not problems, f"create a row of {problems} in seed() so its admin change form is audited"
    pages.append(Page("admin password change", reverse("admin:password_change")))
    pages.append(Page("admin user password", reverse("admin:auth_user_password_change", args=[superuser.pk])))
    return pages


def seed(live_server) -> tuple[User, dict[str, Any]]:
    """A staff owner with a team, a member, keys, a BYOK key, usage and a licence: every page has content."""
    owner = User.objects.create_superuser("owner@example.com", PASSWORD)
    member = User.objects.create_user("member@example.com", PASSWORD)
    team = account_services.create_workspace(user=owner, name="Team")
    membership = Membership.objects.create(user=member, workspace=team, role=Membership.Role.MEMBER)
    account_services.set_openrouter_key(user=owner, key="sk-or-v1-" + "0123456789abcdef" * 4)
    issued = create_api_key(user=owner, name="Laptop")
    revoke_api_key(key=create_api_key(user=owner, name="Old CI key").key)
    Group.objects.create(name="Support")
    tier = AppSumoTier.objects.create(slug="tier-1", name="Tier 1", daily_message_limit=100, monthly_message_limit=1000)
    AppSumoLicence.objects.create(licence_key="APPSUMO-TEST-1", tier=tier, workspace=team)
    # Real traffic through the live server leaves ledger rows and daily counts for the usage pages.
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(2):
            response = session.post(
                f"{live_server.api_base}/chat/completions",
                json={"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {issued.plaintext}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
        stored = session.post(
            f"{live_server.api_base}/responses",
            json={"model": "demo/echo", "input": "hi", "store": True},
            headers={"Authorization": f"Bearer {issued.plaintext}"},
            timeout=30,
        )
        assert stored.status_code == 200, stored.text
        refused = session.get(
            f"{live_server.api_base}/models", headers={"Authorization": "Bearer wmk_not-a-key"}, timeout=30
        )
        assert refused.status_code == 401
    flush_refusals_sync()
    wait_for_ledger_rows()
    rollup_daily_message_counts(days=[timezone.now().date(), timezone.now().date() - dt.timedelta(days=1)])
    values = {
        "workspace_id": team.pk,
        "membership_id": membership.pk,
        "key_id": issued.key.pk,
        "uidb64": urlsafe_base64_encode(force_bytes(owner.pk)),
        "token": default_token_generator.make_token(owner),
        "email-change-confirm.token": signing.dumps(
            {"u": owner.pk, "o": owner.email, "n": "new-owner@example.com"}, salt=account_services.EMAIL_CHANGE_SALT
        ),
    }
    return owner, values


def wait_for_ledger_rows() -> None:
    from billing.models import UsageEvent

    deadline = timezone.now() + dt.timedelta(seconds=10)
    while UsageEvent.objects.count() < 3:
        assert timezone.now() < deadline, "the ledger rows of the seeded requests never landed"


def pages_answering(client: Client, patterns: list[tuple[str, list[str]]], values: dict, who: str) -> list[Page]:
    """The patterns that answer this client's GET with a page (200); redirects are someone else's page."""
    pages = []
    for name, arguments in patterns:
        path = fill(name, arguments, values)
        status = client.get(path).status_code
        assert status in (200, 302), f"GET {path} ({name}, {who}) answered {status}"
        if status == 200:
            pages.append(Page(name if who == "signed in" else f"{name} ({who})", path))
    return pages


def audit_pages(driver: Any, axe: str, base_url: str, pages: list[Page]) -> list[str]:
    problems: list[str] = []
    for width in WIDTHS:
        set_viewport(driver, width=width)
        for page in pages:
            driver.get(base_url + page.path)
            if page.then is not None:
                page.then(driver)
            problems.extend(str(v) for v in run_axe(driver, source=axe, page=page.label, width=width))
            if shots := os.environ.get("BROWSER_SCREENSHOT_DIR"):
                driver.save_screenshot(str(Path(shots) / f"{page.label.replace(' ', '_')}-{width}.png"))
            if width < 600:
                if (overflow := horizontal_overflow(driver, width=width)) > 0:
                    culprits = elements_past_right_edge(driver, width=width)
                    problems.append(f"{page.label} @ {width}px: the page scrolls sideways by {overflow}px: {culprits}")
                if boxes := boxes_scrolling_sideways(driver):
                    problems.append(f"{page.label} @ {width}px: content scrolls sideways inside {boxes}")
    return problems


def log_in(driver: Any, base_url: str, email: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(f"{base_url}/login/")
    driver.find_element(By.NAME, "username").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: "/login/" not in d.current_url)


def test_every_page_has_no_axe_violation_and_fits_a_phone(live_server, fake_upstream, settings) -> None:
    settings.DEMO_PROVIDER_ENABLED = True
    settings.DEMO_STREAM_DELAY_SECONDS = 0
    axe = axe_core_source()
    owner, values = seed(live_server)
    patterns = site_patterns()
    assert any(name == "settings" for name, _ in patterns)

    anonymous = pages_answering(Client(), patterns, values, "anonymous")
    assert {"login (anonymous)", "signup (anonymous)", "password_reset (anonymous)"} <= {p.label for p in anonymous}
    signed_in_client = Client()
    signed_in_client.force_login(owner)
    signed_in = pages_answering(signed_in_client, patterns, values, "signed in")
    assert {
        "settings",
        "apikey-list",
        "usage",
        "workspace-detail",
        "workspace-leave",
        "email-change",
        "email-change-confirm",
        "openrouter-key-remove",
    } <= {page.label for page in signed_in}
    anonymous.append(Page("signup with errors", reverse("signup"), then=submit_form("Sign up")))
    # A reset token is void once its user signs in again (force_login above): make a fresh one.
    values["token"] = default_token_generator.make_token(User.objects.get(pk=owner.pk))
    # The reset link redirects to its form (the token moves into the session); the browser follows it.
    reset_link = fill("password_reset_confirm", ["uidb64", "token"], values)
    anonymous.append(Page("password reset link", reset_link))
    anonymous.append(Page("password reset with errors", reset_link, then=submit_form("Set the new password")))
    signed_in.append(Page("key reveal", reverse("apikey-list"), then=submit_form("Create key", {"name": "Axe"})))
    signed_in.append(Page("settings with errors", reverse("settings"), then=submit_form("Create workspace")))
    signed_in.append(
        Page("BYOK refused", reverse("settings"), then=submit_form("Check and replace key", {"key": "not-a-key"}))
    )
    signed_in.append(
        Page("email change with errors", reverse("email-change"), then=submit_form("Send the confirmation link"))
    )

    with chromium() as driver:
        problems = audit_pages(driver, axe, live_server.url, anonymous)
        log_in(driver, live_server.url, owner.email)
        problems += audit_pages(driver, axe, live_server.url, signed_in)
        problems += audit_pages(driver, axe, live_server.url, admin_pages(owner))

    if problems:
        pytest.fail(f"{len(problems)} problems:\n" + "\n".join(problems), pytrace=False)
