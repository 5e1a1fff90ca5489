"""Production settings: `check --deploy` passes, security headers are on, and unsafe setups refuse to start."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def production_env(**overrides: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "OPENROUTER_API_KEY": "sk-or-v1-" + "e" * 64,
        "ALLOWED_HOSTS": "api.example.com",
        "DJANGO_SETTINGS_MODULE": "writingmate.settings",
        "PYTHONPATH": str(REPO),
    }
    env.pop("DEMO_PROVIDER_ENABLED", None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_production_settings():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


_HEADERS = """
import django, json
django.setup()
from django.test import Client
client = Client(HTTP_HOST="api.example.com")
secure = client.get("/healthz", secure=True)
plain_site = client.get("/admin/login/")
plain_probe = client.get("/healthz")
from django.conf import settings
print(json.dumps({
    "headers": dict(secure.headers),
    "plain_site": [plain_site.status_code, plain_site.headers.get("Location")],
    "plain_probe": plain_probe.status_code,
    "cookies": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.SESSION_COOKIE_HTTPONLY],
}))
"""


def test_security_headers_and_cookies_are_on_when_debug_is_off():
    result = run(["-c", _HEADERS], production_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])

    headers = seen["headers"]
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert seen["plain_site"] == [301, "https://api.example.com/admin/login/"]
    assert seen["plain_probe"] == 200  # probes over plain HTTP inside the network are not redirected
    assert seen["cookies"] == [True, True, True]


def test_production_refuses_the_demo_provider():
    for overrides in ({"OPENROUTER_API_KEY": ""}, {"DEMO_PROVIDER_ENABLED": "1"}):
        result = run(["manage.py", "check"], production_env(**overrides))

        assert result.returncode != 0
        assert "ImproperlyConfigured: The demo provider must not run in production" in result.stderr


def test_production_refuses_a_missing_or_development_secret_key():
    missing = run(["manage.py", "check"], production_env(SECRET_KEY=""))
    development = run(
        ["manage.py", "check"], production_env(SECRET_KEY="dev-only-insecure-secret-key-never-use-in-production")
    )

    assert missing.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in missing.stderr
    assert development.returncode != 0 and "SECRET_KEY must not be the development key" in development.stderr


def test_the_asgi_application_refuses_to_load_with_the_demo_provider_in_production():
    result = run(["-c", "import writingmate.asgi"], production_env(OPENROUTER_API_KEY=""))

    assert result.returncode != 0
    assert "The demo provider must not run in production" in result.stderr


def test_development_still_runs_the_demo_provider():
    result = run(
        [
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.DEMO_PROVIDER_ENABLED)",
        ],
        production_env(DEBUG="1", SECRET_KEY=None, OPENROUTER_API_KEY=""),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_env_example_documents_every_variable_settings_reads():
    read = set(re.findall(r"env\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", (REPO / "writingmate" / "settings.py").read_text()))
    documented = set(re.findall(r"^# ([A-Z][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), flags=re.M))

    assert read, "no env reads found: has settings.py stopped using django-environ?"
    assert read - documented == set()
