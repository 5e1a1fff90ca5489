from django.urls import path

from billing import views

urlpatterns = [
    path("settings/usage/", views.UsageDetailView.as_view(), name="usage"),
]
