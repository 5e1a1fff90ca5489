from django.contrib import admin
from django.urls import include, path

from gateway.urls import api_patterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/openai/v1/", include((api_patterns, "api"), namespace="api")),
    path("v1/", include((api_patterns, "api"), namespace="api-alias")),
    path("", include("accounts.urls")),
    path("", include("apikeys.urls")),
    path("", include("billing.urls")),
    path("", include("gateway.site_urls")),
]
