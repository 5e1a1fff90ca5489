"""The Celery app: Redis as broker when REDIS_URL is set, tasks run eagerly in-process otherwise."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "writingmate.settings")

app = Celery("writingmate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
