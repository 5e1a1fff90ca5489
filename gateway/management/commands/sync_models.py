"""`manage.py sync_models`: refresh the catalogue from OpenRouter's model list, one summary line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gateway.sync import ModelSyncError, sync_models


class Command(BaseCommand):
    help = "Refresh the model catalogue from OpenRouter: add new models disabled, update names, never delete."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = sync_models()
        except ModelSyncError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(result.summary())
