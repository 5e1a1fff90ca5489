"""The API Keys pages: setups ready to paste for this server, rename, expiry, and each key's own usage."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key
from billing.models import UsageEvent
from billing.quotas import billing_day
from billing.selectors import KeyUsage, key_usage
from tests.npm_clients import install_npm_client
from tests.support import wait_for_usage_events

# ../shared beside the repository (or beside the folder of worktrees the repository may be checked out in).
SEEDS = next(
    (p / "shared" / "seeds" for p in Path(__file__).resolve().parents[2:4] if (p / "shared" / "seeds").is_dir()),
    Path(__file__).resolve().parents[2] / "shared" / "seeds",
)
SNIPPET_RE = re.compile(
    r'<pre class="snippet__code"[^>]*><code id="snippet-(?P<slug>[\w-]+)-code"[^>]*>(?P<text>.*?)</code></pre>', re.S
)
KEY_RE = re.compile(r"wmk_[0-9A-Za-z]{49}")
ALL_SETUPS = {"env", "curl", "python", "node", "opencode", "aider", "llm", "codex", "claude-code", "anthropic-python"}


def snippets_in(page: str) -> dict[str, str]:
    return {match["slug"]: html.unescape(match["text"]) for match in SNIPPET_RE.finditer(page)}


def create_key_through_the_page(client: Client, *, host: str = "testserver", **fields: str) -> tuple[str, str]:
    """(key, reveal page) of a key made with the form, as a browser reaching `host` would."""
    response = client.post(reverse("apikey-create"), {"name": "Laptop", **fields}, HTTP_HOST=host)
    assert response.status_code == 200, response.content
    page = response.content.decode()
    return re.search(r'id="new-key"[^>]*value="(wmk_[0-9A-Za-z]{49})"', page).group(1), page


@pytest.fixture
def user(db) -> User:
    return User.objects.create_user("setups@example.com")


@pytest.fixture
def signed_in(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


def test_the_reveal_gives_every_setup_for_this_server_with_a_copy_button_each(signed_in, settings) -> None:
    settings.ALLOWED_HOSTS = ["gw.example.test"]
    key, page = create_key_through_the_page(signed_in, host="gw.example.test:8443")
    base = "http://gw.example.test:8443/api/openai/v1"

    snippets = snippets_in(page)
    assert set(snippets) == ALL_SETUPS
    for slug in snippets:
        assert f'data-copy-target="snippet-{slug}-code"' in page
        assert f'id="snippet-{slug}-status"' in page
    assert snippets["env"].splitlines() == [
        f"export WRITINGMATE_API_KEY={key}",
        'export OPENAI_API_KEY="$WRITINGMATE_API_KEY"',
        f"export OPENAI_BASE_URL={base}",
    ]
    assert f"curl {base}/chat/completions" in snippets["curl"]
    assert f'OpenAI(base_url="{base}"' in snippets["python"]
    assert f'baseURL: "{base}"' in snippets["node"]
    assert f"export OPENAI_API_KEY={key}\nexport OPENAI_API_BASE={base}\n" in snippets["aider"]
    assert "aider --model openai/google/gemini-2.5-flash" in snippets["aider"]
    assert f'  api_base: "{base}"\n  api_key_name: openai' in snippets["llm"]
    assert (
        f'[model_providers.writingmate]\nname = "Writingmate"\nbase_url = "{base}"\n'
        'env_key = "WRITINGMATE_API_KEY"\nwire_api = "responses"\n'
    ) in snippets["codex"]
    assert snippets["claude-code"].startswith(
        f"export ANTHROPIC_BASE_URL=http://gw.example.test:8443/api/anthropic\nexport ANTHROPIC_API_KEY={key}\n"
    )
    assert 'Anthropic(base_url="http://gw.example.test:8443/api/anthropic"' in snippets["anthropic-python"]
    # Only lines that set a variable carry the key; config files name a variable instead.
    for slug, text in snippets.items():
        for line in text.splitlines():
            assert key not in line or line.startswith("export "), (slug, line)
    for slug in ("opencode", "llm", "codex", "curl", "python", "node", "anthropic-python"):
        assert key not in snippets[slug]


def test_opencode_block_is_the_launch_posts_with_this_servers_base_url(signed_in) -> None:
    seeds = sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else []
    post = next((p.read_text() for p in seeds if '"npm": "@ai-sdk/openai-compatible"' in p.read_text()), None)
    if post is None:
        pytest.skip("../shared/seeds (the launch post) is not here")
    start = post.index('{\n  "$schema": "https://opencode.ai/config.json"')
    end = post.index("\n}\n", start) + 3
    launch_block = post[start:end]

    _key, page = create_key_through_the_page(signed_in)

    expected = launch_block.replace("https://writingmate.ai/api/openai/v1", "http://testserver/api/openai/v1")
    assert snippets_in(page)["opencode"] == expected
    assert json.loads(snippets_in(page)["opencode"])["provider"]["writingmate"]["options"]["apiKey"] == (
        "{env:OPENAI_API_KEY}"
    )


def test_the_key_list_shows_setups_with_a_placeholder_and_never_a_key(signed_in, user) -> None:
    key, _page = create_key_through_the_page(signed_in)

    listing = signed_in.get(reverse("apikey-list"))

    page = listing.content.decode()
    assert KEY_RE.search(page) is None and key not in page
    snippets = snippets_in(page)
    assert set(snippets) == ALL_SETUPS
    assert snippets["env"].startswith("export WRITINGMATE_API_KEY=YOUR_WRITINGMATE_DEVELOPER_KEY\n")
    assert "export ANTHROPIC_API_KEY=YOUR_WRITINGMATE_DEVELOPER_KEY" in snippets["claude-code"]
    assert "http://testserver/api/openai/v1" in snippets["python"]
    assert "Use this key" in page
    detail = signed_in.get(reverse("apikey-detail", args=[DeveloperKey.objects.get().pk])).content.decode()
    assert KEY_RE.search(detail) is None


def run_shell_snippets(*texts: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(texts)], capture_output=True, text=True, env=env, timeout=60
    )


def clean_env() -> dict[str, str]:
    """This process's environment without proxies or keys of its own: the snippets set what they need."""
    drop = ("proxy", "openai", "writingmate", "anthropic")
    return {name: value for name, value in os.environ.items() if not any(d in name.lower() for d in drop)}


@pytest.mark.django_db(transaction=True)
def test_the_revealed_curl_and_python_setups_work_against_this_server(live_server, fake_upstream) -> None:
    user = User.objects.create_user("paste@example.com")
    client = Client()
    client.force_login(user)
    host = live_server.url.removeprefix("http://")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("django.conf.settings.ALLOWED_HOSTS", ["127.0.0.1", "testserver"])
        _key, page = create_key_through_the_page(client, host=host)
    snippets = snippets_in(page)

    python = run_shell_snippets(snippets["env"], f"{sys.executable} - <<'PY'\n{snippets['python']}PY", env=clean_env())
    assert python.returncode == 0, python.stderr
    assert python.stdout.strip() != ""

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; the Python setup was run")
    curl = run_shell_snippets(snippets["env"], snippets["curl"], env=clean_env())
    assert curl.returncode == 0, curl.stderr
    assert json.loads(curl.stdout)["object"] == "chat.completion"
    assert [r.json["model"] for r in fake_upstream.requests_to("/chat/completions")] == ["google/gemini-2.5-flash"] * 2
    wait_for_usage_events(2)
    # The key's own usage on the list: both requests, today and this month.
    row = row_of(client.get(reverse("apikey-list")).content.decode(), "Laptop")
    assert row.count("2 requests") == 2 and row.count("2 messages") == 2


OPENAI_NODE = {"openai": "7.60.0", "node": "22.23.3"}  # the SDK needs Node >= 22; the machine may have 20


@pytest.mark.django_db(transaction=True)
def test_the_revealed_node_setup_works_against_this_server(live_server, fake_upstream) -> None:
    folder = install_npm_client("openai-node", OPENAI_NODE, binary="node")
    user = User.objects.create_user("paste-node@example.com")
    client = Client()
    client.force_login(user)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("django.conf.settings.ALLOWED_HOSTS", ["127.0.0.1", "testserver"])
        _key, page = create_key_through_the_page(client, host=live_server.url.removeprefix("http://"))
    snippets = snippets_in(page)
    script = folder / f"hello-{os.getpid()}.mjs"  # beside node_modules, so `import "openai"` resolves
    script.write_text(snippets["node"])
    env = {**clean_env(), "PATH": f"{folder / 'node_modules' / '.bin'}:{os.environ.get('PATH', '')}"}
    try:
        node = run_shell_snippets(snippets["env"], f"node {script}", env=env)
    finally:
        script.unlink(missing_ok=True)

    assert node.returncode == 0, node.stderr
    assert node.stdout.strip() != ""
    wait_for_usage_events(1)


def test_rename_changes_only_the_name_and_needs_the_owner(signed_in, user, client) -> None:
    issued = create_api_key(user=user, name="old name")
    rename = reverse("apikey-rename", args=[issued.key.pk])

    response = signed_in.post(rename, {"name": "  OpenCode on my laptop "}, follow=True)

    assert response.status_code == 200
    key = DeveloperKey.objects.get()
    assert key.name == "OpenCode on my laptop"
    assert key.key_hash == issued.key.key_hash and key.prefix == issued.key.prefix
    assert "Renamed “old name” to “OpenCode on my laptop”." in response.content.decode()
    assert signed_in.post(rename, {"name": "   "}).status_code == 400
    assert DeveloperKey.objects.get().name == "OpenCode on my laptop"

    other = Client()
    other.force_login(User.objects.create_user("other@example.com"))
    assert other.post(rename, {"name": "mine now"}).status_code == 404
    assert other.get(reverse("apikey-detail", args=[key.pk])).status_code == 404
    assert DeveloperKey.objects.get().name == "OpenCode on my laptop"


def test_every_form_on_the_key_pages_needs_the_csrf_token(user) -> None:
    issued = create_api_key(user=user, name="k")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)

    for page in (reverse("apikey-list"), reverse("apikey-detail", args=[issued.key.pk])):
        body = browser.get(page).content.decode()
        assert body.count("<form") == body.count("csrfmiddlewaretoken")
    assert browser.post(reverse("apikey-create"), {"name": "x"}).status_code == 403
    assert browser.post(reverse("apikey-rename", args=[issued.key.pk]), {"name": "x"}).status_code == 403
    assert browser.post(reverse("apikey-revoke", args=[issued.key.pk])).status_code == 403
    assert DeveloperKey.objects.get().name == "k" and DeveloperKey.objects.count() == 1


@pytest.mark.parametrize(("choice", "days"), [("30", 30), ("90", 90), ("never", None), ("", None)])
def test_expiry_is_chosen_at_creation(signed_in, choice: str, days: int | None) -> None:
    before = timezone.now()
    _key, page = create_key_through_the_page(signed_in, expires_in=choice)

    expires_at = DeveloperKey.objects.get().expires_at
    if days is None:
        assert expires_at is None and "Never expires." in page
    else:
        assert before + dt.timedelta(days=days) <= expires_at <= timezone.now() + dt.timedelta(days=days)
        assert f'Expires <time datetime="{expires_at.isoformat()}"' in page.replace("&quot;", '"')


def test_an_expiry_that_is_not_offered_is_refused(signed_in) -> None:
    response = signed_in.post(reverse("apikey-create"), {"name": "x", "expires_in": "3650"})
    assert response.status_code == 400 and not DeveloperKey.objects.exists()
    assert "Select a valid choice" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_key_past_its_expiry_gets_401(live_server) -> None:
    user = User.objects.create_user("expiry@example.com")
    client = Client()
    client.force_login(user)
    key, _page = create_key_through_the_page(client, expires_in="30")
    models = f"{live_server.api_base}/models"
    assert requests.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200

    expired = create_api_key(user=user, name="short-lived", expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = requests.get(models, headers={"Authorization": f"Bearer {expired.plaintext}"}, timeout=10)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    listing = client.get(reverse("apikey-list")).content.decode()
    assert "badge--expired" in listing


def ledger_line(key: DeveloperKey, *, day: dt.date, messages: int, kind: str = "request", byok: bool = False) -> None:
    number = UsageEvent.objects.count()
    UsageEvent.objects.create(
        request_id=f"req_{number}",
        kind=kind,
        workspace_id=key.user.current_workspace_id,
        user=key.user,
        key=key,
        model="openai/gpt-5-mini",
        endpoint="chat.completions",
        counted_messages=messages,
        byok=byok,
        status="succeeded",
        day=day,
    )


def row_of(page: str, name: str) -> str:
    start = page.rindex("<tr", 0, page.index(f">{name}</a>"))
    return page[start : page.index("</tr>", start)]


def test_each_key_shows_its_own_requests_and_messages_today_and_this_month(signed_in, user) -> None:
    laptop = create_api_key(user=user, name="laptop").key
    ci = create_api_key(user=user, name="ci").key
    stranger = create_api_key(user=User.objects.create_user("x@example.com"), name="x").key
    today = billing_day()
    earlier = today.replace(day=1) if today.day > 1 else None
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    ledger_line(laptop, day=today, messages=2)
    ledger_line(laptop, day=today, messages=1)
    ledger_line(laptop, day=today, messages=3, kind="settlement")  # a correction: messages, not a request
    ledger_line(laptop, day=today, messages=5, byok=True)  # own OpenRouter key: a request, no messages
    if earlier:
        ledger_line(laptop, day=earlier, messages=7)
    ledger_line(laptop, day=last_month, messages=100)
    ledger_line(ci, day=today, messages=1)
    ledger_line(stranger, day=today, messages=50)

    usage = key_usage(key_ids=[laptop.pk, ci.pk], today=today)

    month_extra = (1, 7) if earlier else (0, 0)
    assert usage[laptop.pk] == KeyUsage(
        requests_today=3,
        messages_today=6,
        requests_month=3 + month_extra[0],
        messages_month=6 + month_extra[1],
    )
    assert usage[ci.pk] == KeyUsage(1, 1, 1, 1)
    assert stranger.pk not in usage

    listing = signed_in.get(reverse("apikey-list")).content.decode()
    laptop_row = row_of(listing, "laptop")
    assert (
        re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", laptop_row))).split()
        == (
            f"laptop {laptop.masked} 6 messages 3 requests {6 + month_extra[1]} messages "
            f"{3 + month_extra[0]} requests Never Never Active Settings of laptop Revoke laptop"
        ).split()
    )
    ci_row = row_of(listing, "ci")
    assert "1 message<" in ci_row and "1 request<" in ci_row  # singular
    detail = signed_in.get(reverse("apikey-detail", args=[laptop.pk])).content.decode()
    assert "6 messages" in detail and "3 requests" in detail
