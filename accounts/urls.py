"""Sign-up, log in/out, password change and reset, email change and the settings pages."""

from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from accounts import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="settings", permanent=False), name="home"),
    path("signup/", views.SignupView.as_view(), name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("settings/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path(
        "password-reset/",
        views.PasswordResetView.as_view(),
        name="password_reset",
    ),
    path("password-reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("password-reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("settings/email/", views.EmailChangeView.as_view(), name="email-change"),
    path("settings/email/confirm/<str:token>/", views.EmailChangeConfirmView.as_view(), name="email-change-confirm"),
    path("settings/", views.SettingsView.as_view(), name="settings"),
    path("settings/workspaces/new/", views.WorkspaceCreateView.as_view(), name="workspace-create"),
    path("settings/workspaces/<int:workspace_id>/", views.WorkspaceDetailView.as_view(), name="workspace-detail"),
    path(
        "settings/workspaces/<int:workspace_id>/switch/", views.WorkspaceSwitchView.as_view(), name="workspace-switch"
    ),
    path(
        "settings/workspaces/<int:workspace_id>/rename/", views.WorkspaceRenameView.as_view(), name="workspace-rename"
    ),
    path("settings/workspaces/<int:workspace_id>/leave/", views.WorkspaceLeaveView.as_view(), name="workspace-leave"),
    path(
        "settings/workspaces/<int:workspace_id>/members/<int:membership_id>/role/",
        views.MemberRoleChangeView.as_view(),
        name="workspace-member-role",
    ),
    path(
        "settings/workspaces/<int:workspace_id>/members/add/",
        views.MemberAddView.as_view(),
        name="workspace-member-add",
    ),
    path(
        "settings/workspaces/<int:workspace_id>/members/<int:membership_id>/remove/",
        views.MemberRemoveView.as_view(),
        name="workspace-member-remove",
    ),
    path("settings/openrouter/", views.OpenRouterKeySaveView.as_view(), name="openrouter-key-save"),
    path("settings/openrouter/check/", views.OpenRouterKeyRecheckView.as_view(), name="openrouter-key-recheck"),
    path("settings/openrouter/remove/", views.OpenRouterKeyRemoveView.as_view(), name="openrouter-key-remove"),
]
