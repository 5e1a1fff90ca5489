"""Tokens to counted messages: the launch post's formula, exactly, with its constants from settings.

cached_discount = floor(cached_tokens * 0.5)
effective_input = max(0, prompt_tokens - cached_discount)
counted_messages = max(1, ceil((effective_input + completion_tokens) / 16000))
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from billing.models import UsageEvent


def _cached_discount_rate() -> Fraction:
    # A Fraction of the decimal string: 0.5 stays exactly 1/2, never 0.49999… as a float would.
    raw = settings.BILLING_CACHED_TOKEN_DISCOUNT
    try:
        rate = Fraction(Decimal(str(raw)))
    except (InvalidOperation, ValueError) as exc:
        raise ImproperlyConfigured(f"BILLING_CACHED_TOKEN_DISCOUNT must be a decimal string, not {raw!r}") from exc
    if not 0 <= rate <= 1:
        raise ImproperlyConfigured("BILLING_CACHED_TOKEN_DISCOUNT must be between 0 and 1")
    return rate


def count_messages(*, prompt_tokens: int, completion_tokens: int, cached_tokens: int, status: str) -> int:
    """The messages a request counts against its limits.

    `succeeded` counts at least 1 even with empty output. `failed` and `client_disconnected` count
    0 unless the upstream produced completion tokens, and then the formula as for a success
    (docs/decisions.md). Negative token figures (a broken upstream) are treated as 0.
    """
    tokens_per_message = settings.BILLING_TOKENS_PER_MESSAGE
    if tokens_per_message <= 0:
        raise ImproperlyConfigured("BILLING_TOKENS_PER_MESSAGE must be positive")
    prompt, completion, cached = max(0, prompt_tokens), max(0, completion_tokens), max(0, cached_tokens)
    if status != UsageEvent.Status.SUCCEEDED and completion == 0:
        return 0
    cached_discount = math.floor(cached * _cached_discount_rate())
    effective_input = max(0, prompt - cached_discount)
    # Integer ceiling division: exact for any size, unlike ceil() of a float quotient.
    return max(1, -(-(effective_input + completion) // tokens_per_message))
