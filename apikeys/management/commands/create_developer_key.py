"""`manage.py create_developer_key EMAIL [--name NAME]`: the full key alone on the last line of output."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from apikeys.services import create_api_key


class Command(BaseCommand):
    help = "Create a developer key for a user. Prints a summary, then the full key alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--name", default="Created from the command line")

    def handle(self, *args: Any, email: str, name: str, **options: Any) -> None:
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"No user with email {email!r}.")
        issued = create_api_key(user=user, name=name)
        self.stdout.write(f"Created developer key {issued.key.name!r} ({issued.key.masked}) for {user.email}:")
        # Scripts read the last line: keep it the bare key.
        self.stdout.write(issued.plaintext)
