"""Users (email is the login), workspaces, memberships, plans and AppSumo licences."""

from __future__ import annotations

from typing import ClassVar

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models, transaction
from django.db.models.functions import Lower
from django.utils import timezone

FREE_PLAN_SLUG = "free"
# Every member of a workspace sees its name, so the default one names nobody (it used to hold the
# owner's email address).
PERSONAL_WORKSPACE_NAME = "Personal workspace"


class Plan(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    daily_message_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Messages per day for the whole workspace; empty means unlimited."
    )
    member_daily_message_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Messages per day for each member; empty means no per-member limit."
    )
    allowed_model_tiers = models.JSONField(
        default=list, blank=True, help_text='Model tiers this plan includes, e.g. ["basic", "premium"].'
    )
    allowed_model_slugs = models.JSONField(
        default=list, blank=True, help_text="Extra models allowed by exact slug, whatever their tier."
    )
    includes_web_search = models.BooleanField(
        default=False,
        help_text="Hosted web search (OpenAI's web_search tool, Claude's web search and web fetch server tools) "
        "is served; without it those tools are left out of the upstream call.",
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    def allows_model(self, *, slug: str, tier: str) -> bool:
        return tier in self.allowed_model_tiers or slug in self.allowed_model_slugs


class WorkspaceManager(models.Manager["Workspace"]):
    def create_personal(self, *, owner: User) -> Workspace:
        """The workspace every user gets: free plan, owned by them, made their current one."""
        with transaction.atomic():
            workspace = self.create(name=PERSONAL_WORKSPACE_NAME, plan=Plan.objects.get(slug=FREE_PLAN_SLUG))
            Membership.objects.create(user=owner, workspace=workspace, role=Membership.Role.OWNER)
            owner.current_workspace = workspace
            owner.save(update_fields=["current_workspace"])
        return workspace


class Workspace(models.Model):
    name = models.CharField(max_length=200)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="workspaces")
    created_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(
        null=True, blank=True, help_text="Deactivated workspaces keep their records but cannot be used on the API."
    )

    objects = WorkspaceManager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, username: str | None) -> User:
        """Sign-in looks the email up case-insensitively (emails are stored lowercased, see
        User.normalize_username); the Lower(email) unique index serves the lookup."""
        return self.alias(email_lower=Lower("email")).get(email_lower=(username or "").strip().lower())

    def _create_user(self, email: str, password: str | None, **extra_fields: object) -> User:
        if not email:
            raise ValueError("An email address is required.")
        with transaction.atomic(using=self._db):
            user = self.model(email=self.model.normalize_username(email), **extra_fields)
            user.set_password(password)
            user.save(using=self._db)
            Workspace.objects.create_personal(owner=user)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields: object) -> User:
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields: object) -> User:
        extra_fields["is_staff"] = True
        extra_fields["is_superuser"] = True
        return self._create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    current_workspace = models.ForeignKey(Workspace, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ["id"]
        constraints = [
            # Sign-up and sign-in ignore case, so two accounts must never differ only by case.
            models.UniqueConstraint(Lower("email"), name="user_email_unique_ignoring_case"),
        ]

    def __str__(self) -> str:
        return self.email

    @classmethod
    def normalize_username(cls, username: str) -> str:
        """Emails are stored stripped and lowercased wherever a user is created or changed (model
        forms, the admin, the manager), so every lookup can compare lowercase to lowercase."""
        return super().normalize_username(username).strip().lower()


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["user", "workspace"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"

    @property
    def can_manage_members(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.ADMIN)


class AppSumoTier(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    daily_message_limit = models.PositiveIntegerField()
    monthly_message_limit = models.PositiveIntegerField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class AppSumoLicence(models.Model):
    """A lifetime-deal licence redeemed on a workspace; its caps apply on top of the plan's."""

    licence_key = models.CharField(max_length=100, unique=True)
    tier = models.ForeignKey(AppSumoTier, on_delete=models.PROTECT, related_name="licences")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="appsumo_licences")
    activated_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace"],
                condition=models.Q(deactivated_at__isnull=True),
                name="one_active_licence_per_workspace",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tier} licence for {self.workspace}"


class OpenRouterKey(models.Model):
    """A user's own OpenRouter key (BYOK), encrypted at rest; see accounts.encryption."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="openrouter_key")
    encrypted_key = models.TextField()
    last4 = models.CharField(max_length=4)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # What OpenRouter said about the key when it was last checked (GET /key); see accounts.openrouter_keys.
    label = models.CharField(max_length=200, blank=True, help_text="OpenRouter's label for the key.")
    credit_limit = models.DecimalField(
        max_digits=14, decimal_places=4, null=True, blank=True, help_text="USD; empty: no limit on the key."
    )
    credit_remaining = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    limit_reset = models.CharField(max_length=20, blank=True, help_text="daily, weekly, monthly or empty (never).")
    verified_at = models.DateTimeField(null=True, blank=True, help_text="When OpenRouter last accepted the key.")

    def __str__(self) -> str:
        return f"OpenRouter key …{self.last4} of {self.user}"
