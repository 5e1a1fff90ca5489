"""Recompute daily_message_count rows from the ledger (idempotent; safe beside the beat task)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing import rollups
from billing.models import UsageEvent
from billing.quotas import billing_day


class Command(BaseCommand):
    help = "Roll usage events up into daily_message_count: today and yesterday by default."

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--days", type=int, help="the last N billing days, today included")
        group.add_argument("--date", action="append", type=dt.date.fromisoformat, help="a day (YYYY-MM-DD); repeatable")
        group.add_argument("--all", action="store_true", help="every day the ledger has")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"]:
            days = list(UsageEvent.objects.order_by().values_list("day", flat=True).distinct())
        elif options["date"]:
            days = options["date"]
        elif options["days"]:
            today = billing_day()
            days = [today - dt.timedelta(days=i) for i in range(options["days"])]
        else:
            days = None
        drained, result = rollups.drain_spool_and_roll_up(days=days)
        spooled = f", {drained} spooled events replayed" if drained else ""
        self.stdout.write(f"rolled up {len(result.days)} days into {result.rows} daily_message_count rows{spooled}")
