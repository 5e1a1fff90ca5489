"""Billing periods: the billing day in BILLING_DAY_TIMEZONE, its start, the month around it, reset durations."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from django.conf import settings
from django.utils import timezone


def billing_timezone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.BILLING_DAY_TIMEZONE)


def billing_day(at: dt.datetime | None = None) -> dt.date:
    return (at or timezone.now()).astimezone(billing_timezone()).date()


def day_start(day: dt.date) -> dt.datetime:
    """The aware UTC instant a billing day starts."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=billing_timezone()).astimezone(dt.UTC)


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    first = day.replace(day=1)
    next_first = (first + dt.timedelta(days=32)).replace(day=1)
    return first, next_first - dt.timedelta(days=1)


def format_duration(seconds: int) -> str:
    """OpenAI's rate-limit reset style: 59s, 6m0s, 3h2m5s."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
