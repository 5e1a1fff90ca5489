"""WSGI entry point, for the site only; the API needs ASGI (see writingmate.asgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "writingmate.settings")

application = get_wsgi_application()
