"""`manage.py seed_demo`: a demo user with a workspace, and a fresh developer key on the last line.

Idempotent: re-running keeps the user and issues another key. With DEBUG on the password is a known
development one; otherwise a random one is set when the user is created and printed that once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import seed_demo_user
from apikeys.services import create_api_key

DEMO_EMAIL = "demo@writingmate.local"
DEV_PASSWORD = "writingmate-demo"
# Unlimited includes the basic tier, which holds the offline demo/... models, and has no daily cap
# to trip over while trying things out locally.
DEMO_PLAN = "unlimited"


class Command(BaseCommand):
    help = "Create (or reuse) the demo user and print a fresh developer key on the last line."

    def handle(self, *args: Any, **options: Any) -> None:
        seeded = seed_demo_user(
            email=DEMO_EMAIL, plan_slug=DEMO_PLAN, known_password=DEV_PASSWORD if settings.DEBUG else None
        )
        if seeded.password is not None:
            password_note = f"password: {seeded.password}"
        else:
            password_note = "password unchanged since it was first printed"
        issued = create_api_key(user=seeded.user, name="Demo key (seed_demo)")
        action = "Created" if seeded.created else "Reused"
        self.stdout.write(
            f"{action} demo user {seeded.user.email} ({password_note}), workspace "
            f"{seeded.user.current_workspace_id} on the {DEMO_PLAN} plan; log in at /login/. Developer key:"
        )
        self.stdout.write(issued.plaintext)
