from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from gateway.metrics import metrics_view
from gateway.surfaces.anthropic.urls import api_patterns as anthropic_patterns
from gateway.surfaces.openai.urls import api_patterns
from writingmate import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(settings.METRICS_PATH.lstrip("/"), metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/openai/v1/", include((api_patterns, "api"), namespace="api")),
    path("v1/", include((api_patterns, "api"), namespace="api-alias")),
    path("api/anthropic/v1/", include((anthropic_patterns, "anthropic"), namespace="anthropic")),
    path("", include("accounts.urls")),
    path("", include("apikeys.urls")),
    path("", include("billing.urls")),
    path("", include("gateway.site_urls")),
]
