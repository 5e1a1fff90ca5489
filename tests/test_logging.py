"""Structured logs: JSON lines with the request id, and no full key in any line, whatever path it takes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from apikeys.keys import generate_key
from writingmate.logs import (
    JsonFormatter,
    RedactSecretsFilter,
    RequestIdFilter,
    TextFormatter,
    bind_request_id,
    loggable_prompt,
    redact_secrets,
    unbind_request_id,
)

REPO = Path(__file__).resolve().parent.parent
OPENROUTER_KEY = "sk-or-v1-" + "0123456789abcdef" * 4
OPENAI_KEY = "sk-proj-" + "Ab3_dE6-gH9jK2mN5pQ8sT1vW4yZ7bC0" * 2


@pytest.fixture
def captured() -> logging.Logger:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactSecretsFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logging.captured")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.stream = stream
    yield logger
    logger.handlers = []


def lines(logger: logging.Logger) -> list[dict]:
    return [json.loads(line) for line in logger.stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_the_bound_request_id(captured):
    token = bind_request_id("req_abc123")
    try:
        captured.info("upstream answered %s", 200, extra={"model": "openai/gpt-5-mini", "latency_ms": 12})
    finally:
        unbind_request_id(token)
    captured.info("outside a request")

    first, second = lines(captured)
    assert first["message"] == "upstream answered 200"
    assert first["request_id"] == "req_abc123"
    assert first["level"] == "INFO"
    assert first["logger"] == "tests.logging.captured"
    assert first["model"] == "openai/gpt-5-mini"
    assert first["latency_ms"] == 12
    assert first["ts"].endswith("+00:00")
    assert second["request_id"] is None


def test_tasks_started_inside_a_request_keep_its_id_and_concurrent_requests_do_not_mix(captured):
    async def request(request_id: str) -> None:
        bind_request_id(request_id)

        async def child() -> None:
            await asyncio.sleep(0)
            captured.info("child of %s", request_id)

        await asyncio.create_task(child())
        await asyncio.sleep(0)
        captured.info("end of %s", request_id)

    async def main() -> None:
        await asyncio.gather(*(asyncio.create_task(request(f"req_{n}")) for n in range(5)))

    asyncio.run(main())
    records = lines(captured)
    assert len(records) == 10
    for record in records:
        assert record["message"].endswith(record["request_id"])


@pytest.mark.parametrize("secret", [generate_key(), OPENROUTER_KEY, OPENAI_KEY], ids=["developer", "openrouter", "sk"])
def test_no_line_contains_a_full_key_in_message_args_extra_or_traceback(captured, secret):
    captured.warning(f"presented {secret} in the message")
    captured.warning("presented %s as an argument", secret)
    captured.warning("in extra", extra={"authorization": f"Bearer {secret}", "payload": {"api_key": secret}})
    try:
        raise ValueError(f"upstream refused {secret}")
    except ValueError:
        captured.exception("with a traceback")

    output = captured.stream.getvalue()
    assert secret not in output
    assert secret[-4:] in output  # the masked form keeps the last four for support
    records = lines(captured)
    assert records[2]["payload"]["api_key"].endswith("…" + secret[-4:])
    assert "ValueError: upstream refused" in records[3]["exc_info"]


class Keeping(logging.Handler):
    """A later handler, as Sentry's or a file's would be: it keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter("%(message)s")], ids=["json", "text"])
def test_redaction_keeps_the_arguments_and_traceback_for_the_next_handler(captured, formatter):
    captured.handlers[0].setFormatter(formatter)
    later = Keeping()
    captured.addHandler(later)
    secret = generate_key()
    try:
        raise ValueError(f"upstream refused {secret}")
    except ValueError:
        captured.exception("failed for %s after %d tries", secret, 2)

    assert secret not in captured.stream.getvalue()
    assert "ValueError: upstream refused" in captured.stream.getvalue()
    [record] = later.records
    # The arguments and the traceback are still there for the next handler, with the key masked.
    assert record.msg == "failed for %s after %d tries" and record.args[1] == 2
    assert record.args[0] == f"{secret[:10]}…{secret[-4:]}"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    later_line = logging.Formatter("%(message)s").format(record)
    assert "ValueError: upstream refused" in later_line and "Traceback" in later_line
    assert secret not in later_line


def test_masked_forms():
    key = generate_key()
    assert redact_secrets(f"key={key}") == f"key={key[:10]}…{key[-4:]}"
    assert redact_secrets(OPENROUTER_KEY) == "sk-or-…" + OPENROUTER_KEY[-4:]
    assert (
        redact_secrets("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345") == "Authorization: Bearer [redacted]"
    )
    # Ordinary text is untouched, including short look-alikes.
    assert (
        redact_secrets("wmk_abc is the prefix; ask-me and task-runner")
        == "wmk_abc is the prefix; ask-me and task-runner"
    )


def test_prompts_are_not_logged_unless_log_prompts_is_on():
    messages = [{"role": "user", "content": "my secret plan"}]
    assert "secret plan" not in str(loggable_prompt(messages))
    with override_settings(LOG_PROMPTS=True):
        assert loggable_prompt(messages) == messages
    assert settings.LOG_PROMPTS is False


def test_text_format_carries_the_request_id_too():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(TextFormatter(settings.LOGGING["formatters"]["text"]["format"]))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token = bind_request_id("req_text")
    try:
        handler.handle(record)
    finally:
        unbind_request_id(token)
    assert "[req_text] hello world" in stream.getvalue()


def production_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "OPENROUTER_API_KEY": "sk-or-v1-" + "f" * 64,
        "DJANGO_SETTINGS_MODULE": "writingmate.settings",
        "PYTHONPATH": str(REPO),
    }
    env.pop("LOG_FORMAT", None)
    env.update(extra)
    return env


def test_production_settings_log_json_through_the_redacting_handler():
    key = generate_key()
    script = (
        "import django, logging; django.setup(); "
        "from writingmate.logs import bind_request_id; bind_request_id('req_prod'); "
        f"logging.getLogger('gateway.surfaces.openai.views').warning('bad key %s', {key!r}); "
        f"logging.getLogger('uvicorn.error').error('uvicorn line {key}')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=production_env(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert key not in result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [record["logger"] for record in records] == ["gateway.surfaces.openai.views", "uvicorn.error"]
    assert all(record["request_id"] == "req_prod" for record in records)
    assert records[0]["message"] == f"bad key {key[:10]}…{key[-4:]}"


def test_debug_defaults_to_text_and_log_format_can_force_json():
    script = "import django; django.setup(); from django.conf import settings; print(settings.LOG_FORMAT)"
    for extra, expected in (({"DEBUG": "1"}, "text"), ({"DEBUG": "1", "LOG_FORMAT": "json"}, "json"), ({}, "json")):
        result = subprocess.run(
            [sys.executable, "-c", script], env=production_env(**extra), cwd=REPO, capture_output=True, text=True
        )
        assert result.stdout.strip() == expected, result.stderr


def test_uvicorns_colour_copy_of_the_message_is_left_out(captured):
    captured.info(
        "Started server process [%d]", 42, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"}
    )

    [line] = lines(captured)
    assert line["message"] == "Started server process [42]"
    assert "color_message" not in line


@pytest.mark.django_db(transaction=True)
def test_one_access_line_per_request_once_the_response_is_out(live_server, caplog):
    import requests

    from tests.support import make_user

    caller = make_user()
    caplog.set_level(logging.INFO, logger="writingmate.access")
    api = requests.get(f"{live_server.v1_base}/models", headers={"Authorization": f"Bearer {caller.key}"}, timeout=10)
    site = requests.get(f"{live_server.url}/login/?next=/settings/", timeout=10)

    def access_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "writingmate.access"]

    for _ in range(100):  # written just after the response, so maybe a moment after the client has it
        if len(access_lines()) >= 2:
            break
        time.sleep(0.02)
    access = access_lines()
    assert [r.getMessage().split('"')[1] for r in access] == [
        "GET /v1/models HTTP/1.1",
        "GET /login/?next=/settings/ HTTP/1.1",
    ]
    assert [r.getMessage().split('" ')[1].split()[0] for r in access] == ["200", "200"]
    assert access[0].request_id == api.headers["x-request-id"] and site.status_code == 200


def test_uvicorns_own_access_log_is_off_once_django_has_configured_logging():
    # As `uvicorn writingmate.asgi:application` does it: uvicorn's logging first, then the app's import.
    script = (
        "import logging, uvicorn; uvicorn.Config('writingmate.asgi:application').configure_logging(); "
        "import writingmate.asgi; print(logging.getLogger('uvicorn.access').hasHandlers())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=production_env(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # it would write before the response headers; ours writes after
