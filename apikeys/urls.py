"""The API Keys settings pages."""

from django.urls import path

from apikeys import views

urlpatterns = [
    path("settings/api-keys/", views.ApiKeyListView.as_view(), name="apikey-list"),
    path("settings/api-keys/new/", views.ApiKeyCreateView.as_view(), name="apikey-create"),
    path("settings/api-keys/<int:key_id>/", views.ApiKeyDetailView.as_view(), name="apikey-detail"),
    path("settings/api-keys/<int:key_id>/rename/", views.ApiKeyRenameView.as_view(), name="apikey-rename"),
    path("settings/api-keys/<int:key_id>/limits/", views.ApiKeyLimitsView.as_view(), name="apikey-limits"),
    path("settings/api-keys/<int:key_id>/revoke/", views.ApiKeyRevokeView.as_view(), name="apikey-revoke"),
]
