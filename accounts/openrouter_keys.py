"""Checking a user's own OpenRouter key (BYOK) before it is saved: its format, then OpenRouter's
"current API key" endpoint (GET {OPENROUTER_BASE_URL}/key with the key as Bearer), which answers
with the key's label, credit limit and what remains of it, or 401 for a key it does not know.

Accounts sits below the gateway, so this is its own small sync client (requests), with explicit
timeouts, no redirects (they would carry the key elsewhere) and no proxies from the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from django.conf import settings

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
# OpenRouter keys read "sk-or-v1-" and 64 hex digits today; accept any "sk-or-" key of plausible
# characters and length so a new key version is not refused here before OpenRouter sees it.
KEY_FORMAT = re.compile(r"sk-or-[A-Za-z0-9_-]{16,200}")
_MESSAGE_MAX = 200
AMOUNT_LIMIT = Decimal(10) ** 9  # USD; what OpenRouterKey's decimal columns hold


class OpenRouterKeyError(Exception):
    """The key was not saved; the message says why and is safe to show to its owner."""


class MalformedOpenRouterKey(OpenRouterKeyError):
    pass


class OpenRouterKeyRejected(OpenRouterKeyError):
    pass


class OpenRouterUnavailable(OpenRouterKeyError):
    """OpenRouter could not be asked (unreachable, slow, 429/5xx, an unexpected answer)."""


@dataclass(frozen=True)
class OpenRouterKeyInfo:
    label: str
    credit_limit: Decimal | None  # USD; None: no limit on this key
    credit_remaining: Decimal | None
    limit_reset: str  # "daily", "weekly", "monthly" or "" (never resets)
    is_free_tier: bool


def ensure_key_format(key: str) -> str:
    """The key stripped of surrounding whitespace, or MalformedOpenRouterKey saying what is wrong."""
    key = key.strip()
    if key.startswith("wmk_"):
        raise MalformedOpenRouterKey(
            "That is a Writingmate developer key. Paste the key from your OpenRouter account here "
            "(openrouter.ai → Keys); it starts with sk-or-."
        )
    if not KEY_FORMAT.fullmatch(key):
        raise MalformedOpenRouterKey(
            "This does not look like an OpenRouter API key: they start with sk-or- (for example "
            "sk-or-v1-…) and contain only letters, digits and dashes. Copy it again from openrouter.ai → Keys."
        )
    return key


def check_openrouter_key(key: str) -> OpenRouterKeyInfo:
    """Ask OpenRouter about `key`. Raises OpenRouterKeyRejected (401/403) or OpenRouterUnavailable."""
    url = f"{settings.OPENROUTER_BASE_URL}/key"
    try:
        with requests.Session() as session:
            session.trust_env = False  # no proxy from the environment sees the key
            response = session.get(
                url,
                headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
                timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                allow_redirects=False,
            )
    except requests.Timeout as exc:
        raise OpenRouterUnavailable(
            "OpenRouter did not answer in time, so the key could not be checked and was not saved. Try again shortly."
        ) from exc
    except requests.RequestException as exc:
        raise OpenRouterUnavailable(
            "OpenRouter could not be reached, so the key could not be checked and was not saved. Try again shortly."
        ) from exc
    if response.status_code in (401, 403):
        reason = _upstream_message(response, key)
        raise OpenRouterKeyRejected(
            f"OpenRouter did not accept this key{f' ({reason})' if reason else ''}. Check that it is active "
            "on openrouter.ai → Keys and copy it again."
        )
    if response.status_code != 200:
        raise OpenRouterUnavailable(
            f"OpenRouter answered {response.status_code} when asked about the key, so it was not saved. "
            "Try again shortly."
        )
    try:
        data = response.json()["data"]
        return OpenRouterKeyInfo(
            label=str(data.get("label") or "")[:200],
            credit_limit=_money(data.get("limit")),
            credit_remaining=_money(data.get("limit_remaining")),
            limit_reset=str(data.get("limit_reset") or "")[:20],
            is_free_tier=bool(data.get("is_free_tier")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OpenRouterUnavailable(
            "OpenRouter's answer about the key was not what we expected, so it was not saved. Try again shortly."
        ) from exc


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value))
        if not amount.is_finite() or abs(amount) >= AMOUNT_LIMIT:
            raise ValueError(f"not a plausible amount: {value!r}")
        return amount.quantize(Decimal("0.0001"))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {value!r}") from exc


def _upstream_message(response: requests.Response, key: str) -> str:
    """OpenRouter's own reason, short and never echoing the key back."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""
    return message.replace(key, "…")[:_MESSAGE_MAX]
