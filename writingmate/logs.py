"""Structured logs: a JSON formatter, the request id every line carries, and secret redaction.

`bind_request_id` sets the id for the current task (gateway.asgi does it once per /v1 request);
`RequestIdFilter` copies it onto each record; `RedactSecretsFilter` masks keys in the record without
losing its arguments or traceback, and the formatters (`JsonFormatter`, `TextFormatter`) mask the
finished line once more.
Prompts are never logged unless settings.LOG_PROMPTS is on: pass them through `loggable_prompt`.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar, Token
from datetime import UTC, datetime

from django.conf import settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(value: str | None) -> Token:
    """Tag every log line of the current task (and the tasks it starts) with `value`."""
    return request_id.set(value)


def unbind_request_id(token: Token) -> None:
    request_id.reset(token)


# Developer keys (apikeys.keys: `wmk_` + 49 base62), OpenRouter keys (`sk-or-v1-` + hex), other
# `sk-...` keys and any bearer credential. Lengths are lower bounds so that a longer look-alike is
# masked too; `wmk_abc` in prose is left alone.
_SECRET_PATTERN = re.compile(
    r"(?P<wmk>wmk_[0-9A-Za-z]{20,})"
    r"|(?P<sk>sk-(?:or-v\d+-|proj-|ant-|svcacct-)?[A-Za-z0-9_\-]{16,})"
    r"|(?P<bearer>(?i:bearer)\s+(?!wmk_|sk-)[A-Za-z0-9._~+/=\-]{16,})"
)
_SECRET_MARKERS = ("wmk_", "sk-", "earer")


def _mask(match: re.Match[str]) -> str:
    secret = match.group(0)
    if match.lastgroup == "wmk":
        # The visible prefix and last four are what Settings → API Keys already shows.
        return f"{secret[:10]}…{secret[-4:]}"
    if match.lastgroup == "sk":
        prefix = "sk-or-" if secret.startswith("sk-or-") else "sk-"
        return f"{prefix}…{secret[-4:]}"
    return f"{secret.split()[0]} [redacted]"


def redact_secrets(text: str) -> str:
    """`text` with every developer, OpenRouter, `sk-` or bearer key masked to a prefix and last four."""
    if not any(marker in text for marker in _SECRET_MARKERS):
        return text
    return _SECRET_PATTERN.sub(_mask, text)


_access_logger = logging.getLogger("writingmate.access")


def log_access(scope: dict, *, status: int, duration_seconds: float) -> None:
    """One access line per HTTP request, written once the response is out, so no client waits for it.

    uvicorn's own access log is off (settings.LOGGING gives it no handler): it writes before the
    response headers, on every request's critical path.
    """
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    path = scope.get("path", "")
    if scope.get("query_string"):
        # A key in the query string (`?api_key=...`) is masked here, at the source.
        path = f"{path}?{redact_secrets(scope['query_string'].decode('latin1'))}"
    _access_logger.info(
        '%s - "%s %s HTTP/%s" %d %.1fms',
        f"{client[0]}:{client[1]}" if client else "-",
        scope.get("method", ""),
        path,
        scope.get("http_version", "1.1"),
        status,
        duration_seconds * 1000,
    )


def loggable_prompt(prompt: object) -> object:
    """The prompt itself when settings.LOG_PROMPTS is on (the only way one may be logged), else a stub."""
    if getattr(settings, "LOG_PROMPTS", False):
        return prompt
    return "[prompt not logged: LOG_PROMPTS is off]"


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (None outside a request) for both formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class RedactSecretsFilter(logging.Filter):
    """Masks keys in the record's message, arguments, traceback text and extra fields, keeping all of them.

    Attached to handlers; the record is shared by every handler that sees it after this one, so the
    masking must not lose anything: `args` keep their values (strings masked), `exc_info` stays (the
    masked traceback goes to `exc_text`, which formatters print instead), so a later handler (Sentry,
    a file) still has its arguments and traceback, without the keys.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redacted(value) for name, value in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        for name in _extra_names(record):
            record.__dict__[name] = _redacted(record.__dict__[name])
        return True


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_secrets(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    encoded = _to_json(value)
    redacted = redact_secrets(encoded)
    return value if redacted == encoded else json.loads(redacted)


# Record attributes that are not extra fields; uvicorn's `color_message` repeats the message with ANSI codes.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
}


def _extra_names(record: logging.LogRecord) -> list[str]:
    return [name for name in record.__dict__ if name not in _RESERVED]


def _to_json(value: object) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extra fields, exc_info.

    Keys are masked in the finished line (message, arguments, extra fields, traceback alike). The
    record itself is left as it came: a later handler (Sentry, a file) still gets its `args` and
    `exc_info`.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for name in _extra_names(record):
            entry[name] = record.__dict__[name]
        if record.exc_info or record.exc_text:
            entry["exc_info"] = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        # The masks hold no quote or backslash, so the line stays valid JSON.
        return redact_secrets(_to_json(entry))


class TextFormatter(logging.Formatter):
    """logging's own text format, with keys masked in the finished line (the record is left as it came)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))
