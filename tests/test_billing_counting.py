"""The launch post's counting formula: its worked example, cached-token discounts, status rules, and
properties checked against an independent exact-arithmetic reading of the formula."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.counting import count_messages
from billing.ledger import UsageRecord, count_for

tokens = st.integers(min_value=0, max_value=10**9)


def launch_post(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> int:
    """The formula as printed, with 0.5 and 16000 written out (Fraction: no float rounding)."""
    cached_discount = math.floor(cached_tokens * Fraction(1, 2))
    effective_input = max(0, prompt_tokens - cached_discount)
    return max(1, math.ceil(Fraction(effective_input + completion_tokens, 16000)))


def succeeded(prompt: int, completion: int, cached: int = 0) -> int:
    return count_messages(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, status="succeeded")


def test_the_launch_posts_worked_example_counts_one_message() -> None:
    assert succeeded(10, 5) == 1


@pytest.mark.parametrize(
    ("prompt", "completion", "cached", "expected"),
    [
        (16000, 0, 0, 1),
        (16001, 0, 0, 2),
        (16000, 1, 0, 2),
        # 2,000 cached tokens take 1,000 off the input: 16,500 - 1,000 + 500 = 16,000 → 1 message.
        (16500, 500, 2000, 1),
        (16500, 501, 2000, 2),
        # floor(3 * 0.5) = 1, not 1.5 and not 2.
        (16001, 0, 3, 1),
        (16002, 0, 3, 2),
        # The discount never makes the input negative, and never makes a request free.
        (100, 0, 10_000, 1),
        (0, 32000, 10_000, 2),
        (48000, 0, 32000, 2),
        (0, 0, 0, 1),
    ],
)
def test_cached_prompt_tokens_are_discounted_by_half(prompt: int, completion: int, cached: int, expected: int) -> None:
    assert succeeded(prompt, completion, cached) == expected


@given(prompt=tokens, completion=tokens, cached=tokens)
@hypothesis_settings(max_examples=300, deadline=None)
def test_successful_requests_count_exactly_as_the_launch_post_says(prompt: int, completion: int, cached: int) -> None:
    assert succeeded(prompt, completion, cached) == launch_post(prompt, completion, cached)


@given(prompt=tokens, completion=tokens, cached=tokens)
@hypothesis_settings(max_examples=200, deadline=None)
def test_a_success_counts_at_least_one_and_at_most_one_per_16000_tokens_started(
    prompt: int, completion: int, cached: int
) -> None:
    counted = succeeded(prompt, completion, cached)
    assert counted >= 1
    assert counted <= max(1, -(-(prompt + completion) // 16000))


@given(prompt=tokens, completion=tokens, cached=tokens, extra=st.integers(min_value=0, max_value=10**6))
@hypothesis_settings(max_examples=200, deadline=None)
def test_more_tokens_never_count_fewer_messages_and_more_cache_never_counts_more(
    prompt: int, completion: int, cached: int, extra: int
) -> None:
    base = succeeded(prompt, completion, cached)
    assert succeeded(prompt + extra, completion, cached) >= base
    assert succeeded(prompt, completion + extra, cached) >= base
    assert succeeded(prompt, completion, cached + extra) <= base


@given(prompt=tokens, cached=tokens)
@hypothesis_settings(max_examples=100, deadline=None)
def test_failed_and_disconnected_requests_without_completion_tokens_count_nothing(prompt: int, cached: int) -> None:
    for status in ("failed", "client_disconnected"):
        assert count_messages(prompt_tokens=prompt, completion_tokens=0, cached_tokens=cached, status=status) == 0


@given(prompt=tokens, completion=st.integers(min_value=1, max_value=10**9), cached=tokens)
@hypothesis_settings(max_examples=100, deadline=None)
def test_failed_and_disconnected_requests_with_completion_tokens_count_like_a_success(
    prompt: int, completion: int, cached: int
) -> None:
    for status in ("failed", "client_disconnected"):
        counted = count_messages(
            prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, status=status
        )
        assert counted == launch_post(prompt, completion, cached)


def test_negative_token_figures_from_a_broken_upstream_count_as_zero() -> None:
    assert succeeded(-5, -7, -100) == 1
    assert count_messages(prompt_tokens=10**15, completion_tokens=-7, cached_tokens=10**16, status="succeeded") == 1


def test_the_constants_come_from_settings_with_exact_decimal_arithmetic(settings) -> None:
    settings.BILLING_TOKENS_PER_MESSAGE = 1000
    settings.BILLING_CACHED_TOKEN_DISCOUNT = "0.1"
    assert succeeded(1003, 0, 30) == 1  # floor(30 * 0.1) = 3 off the input
    assert succeeded(1004, 0, 30) == 2
    settings.BILLING_CACHED_TOKEN_DISCOUNT = "0.29"
    # As floats 100 * 0.29 is 28.999999999999996 (floor 28); exactly it is 29, so 1,029 - 29 fits in one.
    assert succeeded(1029, 0, 100) == 1
    assert succeeded(1030, 0, 100) == 2


@given(rate=st.decimals(min_value=0, max_value=1, places=3), prompt=tokens, cached=tokens, completion=tokens)
@hypothesis_settings(max_examples=150, deadline=None)
def test_any_configured_discount_applies_exactly(rate: Decimal, prompt: int, cached: int, completion: int) -> None:
    from django.conf import settings

    original = settings.BILLING_CACHED_TOKEN_DISCOUNT
    settings.BILLING_CACHED_TOKEN_DISCOUNT = str(rate)
    try:
        effective = max(0, prompt - math.floor(cached * Fraction(rate)))
        expected = max(1, math.ceil(Fraction(effective + completion, 16000)))
        assert succeeded(prompt, completion, cached) == expected
    finally:
        settings.BILLING_CACHED_TOKEN_DISCOUNT = original


def test_a_bad_discount_setting_is_refused(settings) -> None:
    settings.BILLING_CACHED_TOKEN_DISCOUNT = "half"
    with pytest.raises(ImproperlyConfigured):
        succeeded(1, 1, 1)
    settings.BILLING_CACHED_TOKEN_DISCOUNT = "1.5"
    with pytest.raises(ImproperlyConfigured):
        succeeded(1, 1, 1)


def test_count_for_applies_the_formula_to_a_usage_record() -> None:
    record = UsageRecord(
        request_id="req_1",
        workspace_id=1,
        user_id=1,
        key_id=None,
        model="openai/gpt-5-mini",
        endpoint="audio.transcriptions",
        prompt_tokens=20000,
        completion_tokens=15000,
        cached_tokens=8000,
        byok=False,
        status="succeeded",
        latency_ms=10,
    )
    assert count_for(record) == 2  # 20,000 - 4,000 + 15,000 = 31,000 → 2
