"""Check that every daily_message_count row equals the sum of its ledger lines; exit 1 if not."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import rollups
from billing.quotas import billing_day


class Command(BaseCommand):
    help = "Audit daily_message_count against the usage ledger (every day up to yesterday by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="only the last N billing days")
        parser.add_argument("--include-today", action="store_true", help="also today (run the roll-up first)")

    def handle(self, *args: Any, **options: Any) -> None:
        days = None
        if options["days"]:
            today = billing_day()
            days = [today - dt.timedelta(days=i) for i in range(options["days"])]
        result = rollups.audit_daily_message_counts(days=days, include_today=options["include_today"])
        for mismatch in result.mismatches:
            self.stderr.write(mismatch)
        summary = (
            f"audited {result.days} days, {result.rows} daily_message_count rows: {len(result.mismatches)} mismatches"
        )
        if not result.ok:
            raise CommandError(summary)
        self.stdout.write(summary)
