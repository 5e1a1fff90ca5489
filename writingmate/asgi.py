"""ASGI entry point: /v1 and /api/openai/v1 go to the gateway's lean handler, the rest to Django's."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "writingmate.settings")

site_application = get_asgi_application()

from gateway.asgi import ApiApplication  # noqa: E402 -- needs the app registry that the line above loads

application = ApiApplication(site_application=site_application)
