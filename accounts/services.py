"""Every write on users, workspaces, memberships and BYOK keys, with the rules that guard them.

Anything that changes what a user may do on /v1 bumps the access epoch after commit, so cached key
grants are rebuilt on the next request.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import openrouter_keys
from accounts.access import bump_access_epoch
from accounts.encryption import decrypt_secret, encrypt_secret
from accounts.models import FREE_PLAN_SLUG, Membership, OpenRouterKey, Plan, User, Workspace


class WorkspaceRuleError(Exception):
    """A workspace action the rules forbid; the message is safe to show to the user."""


class NotAllowed(WorkspaceRuleError):
    pass


class UserNotFound(WorkspaceRuleError):
    pass


class AlreadyMember(WorkspaceRuleError):
    pass


class LastOwner(WorkspaceRuleError):
    pass


class WorkspaceDeactivated(WorkspaceRuleError):
    pass


class EmailTaken(Exception):
    pass


class EmailChangeInvalid(Exception):
    """An email-change link that is forged, expired, for someone else or already used; the message is
    safe to show."""


EMAIL_CHANGE_SALT = "accounts.email-change"


@dataclass(frozen=True)
class EmailChange:
    user_id: int
    old_email: str
    new_email: str


@dataclass(frozen=True)
class SeededUser:
    user: User
    created: bool
    password: str | None  # set only when this call set the password


def _bump_after_commit() -> None:
    transaction.on_commit(bump_access_epoch)


def sign_up(*, email: str, password: str, name: str = "") -> User:
    """Create a user with their personal workspace on the free plan (see UserManager)."""
    try:
        with transaction.atomic():
            return User.objects.create_user(email, password, name=name.strip())
    except IntegrityError as exc:
        # The form checks first; the unique constraint settles the race between two sign-ups.
        raise EmailTaken(f"An account with {email} already exists.") from exc


def seed_demo_user(*, email: str, plan_slug: str, known_password: str | None) -> SeededUser:
    """Idempotent. With `known_password` the password is (re)set to it; otherwise a new user gets a
    random one, returned once, and an existing user keeps theirs."""
    plan = Plan.objects.get(slug=plan_slug)
    with transaction.atomic():
        user = User.objects.filter(email__iexact=email).first()
        created = user is None
        password = known_password
        if user is None:
            password = known_password or secrets.token_urlsafe(12)
            user = User.objects.create_user(email, password, name="Demo user")
        elif known_password is not None:
            user.set_password(known_password)
            user.save(update_fields=["password"])
        workspace = user.current_workspace or Workspace.objects.create_personal(owner=user)
        if workspace.plan_id != plan.pk:
            workspace.plan = plan
            workspace.save(update_fields=["plan"])
        _bump_after_commit()
    return SeededUser(user=user, created=created, password=password)


def create_workspace(*, user: User, name: str) -> Workspace:
    """A new workspace on the free plan owned by `user`; their current workspace does not change."""
    with transaction.atomic():
        workspace = Workspace.objects.create(name=name.strip(), plan=Plan.objects.get(slug=FREE_PLAN_SLUG))
        Membership.objects.create(user=user, workspace=workspace, role=Membership.Role.OWNER)
        _bump_after_commit()
    return workspace


def switch_current_workspace(*, user: User, workspace_id: int) -> Workspace:
    membership = Membership.objects.select_related("workspace").filter(user=user, workspace_id=workspace_id).first()
    if membership is None:
        raise NotAllowed("You are not a member of that workspace.")
    if membership.workspace.deactivated_at is not None:
        raise WorkspaceDeactivated(
            f"“{membership.workspace.name}” is deactivated: the API does not serve it, so it cannot be your "
            "current workspace. Contact support to have it reactivated."
        )
    with transaction.atomic():
        user.current_workspace = membership.workspace
        user.save(update_fields=["current_workspace"])
        _bump_after_commit()
    return membership.workspace


def ensure_can_manage_members(*, actor: User, workspace: Workspace) -> Membership:
    membership = Membership.objects.filter(user=actor, workspace=workspace).first()
    if membership is None or not membership.can_manage_members:
        raise NotAllowed("Only owners and admins can manage the members of this workspace.")
    return membership


def add_member_by_email(
    *, actor: User, workspace: Workspace, email: str, role: str = Membership.Role.MEMBER
) -> Membership:
    """Add an existing user. Admins may add members and admins; only owners may add owners."""
    actor_membership = ensure_can_manage_members(actor=actor, workspace=workspace)
    if role not in Membership.Role.values:
        raise NotAllowed("Unknown role.")
    if role == Membership.Role.OWNER and actor_membership.role != Membership.Role.OWNER:
        raise NotAllowed("Only owners can add another owner.")
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        # Only existing accounts: we send no invitations, and we say so rather than guess.
        raise UserNotFound(f"No Writingmate account uses {email.strip()}. Ask them to sign up first.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(user=user, workspace=workspace, role=role)
            _bump_after_commit()
    except IntegrityError as exc:
        raise AlreadyMember(f"{user.email} is already a member of {workspace.name}.") from exc
    return membership


def remove_member(*, actor: User, membership: Membership) -> None:
    """Owners remove anyone, admins remove admins and members; the last owner always stays.

    The workspace's memberships are locked while counting owners, so two owners removing each
    other at once cannot leave the workspace without one.
    """
    actor_membership = ensure_can_manage_members(actor=actor, workspace=membership.workspace)
    if membership.role == Membership.Role.OWNER and actor_membership.role != Membership.Role.OWNER:
        raise NotAllowed("Only owners can remove an owner.")
    with transaction.atomic():
        owners = _owner_ids_locked(workspace_id=membership.workspace_id)
        if membership.role == Membership.Role.OWNER and owners == [membership.pk]:
            raise LastOwner("A workspace needs at least one owner; add another owner before removing this one.")
        deleted, _ = Membership.objects.filter(pk=membership.pk).delete()
        if deleted:
            _move_off_workspace(user_id=membership.user_id, workspace_id=membership.workspace_id)
        _bump_after_commit()


def rename_workspace(*, actor: User, workspace: Workspace, name: str) -> Workspace:
    """Owners and admins rename; the name is in cached API grants, so the epoch is bumped."""
    ensure_can_manage_members(actor=actor, workspace=workspace)
    name = name.strip()
    if not name:
        raise NotAllowed("A workspace needs a name.")
    with transaction.atomic():
        Workspace.objects.filter(pk=workspace.pk).update(name=name)
        _bump_after_commit()
    workspace.name = name
    return workspace


def _owner_ids_locked(*, workspace_id: int) -> list[int]:
    """The workspace's owner memberships, locked until the transaction ends, so that two concurrent
    changes (leave, demote, remove) cannot each see another owner and together leave none."""
    return list(
        Membership.objects.select_for_update()
        .filter(workspace_id=workspace_id, role=Membership.Role.OWNER)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def leave_workspace(*, user: User, workspace_id: int) -> Workspace:
    """Anyone may leave, except the last owner (they make someone else an owner first)."""
    with transaction.atomic():
        owners = _owner_ids_locked(workspace_id=workspace_id)
        membership = (
            Membership.objects.select_for_update()
            .select_related("workspace")
            .filter(user=user, workspace_id=workspace_id)
        ).first()
        if membership is None:
            raise NotAllowed("You are not a member of that workspace.")
        if owners == [membership.pk]:
            raise LastOwner("You are the only owner of this workspace: make another member an owner before you leave.")
        membership.delete()
        _move_off_workspace(user_id=user.pk, workspace_id=workspace_id)
        _bump_after_commit()
    return membership.workspace


def change_member_role(*, actor: User, membership: Membership, role: str) -> Membership:
    """Owners change anyone's role (their own too); the last owner can never be demoted."""
    if role not in Membership.Role.values:
        raise NotAllowed("Unknown role.")
    with transaction.atomic():
        owners = _owner_ids_locked(workspace_id=membership.workspace_id)
        actor_membership = Membership.objects.filter(user=actor, workspace_id=membership.workspace_id).first()
        if actor_membership is None or actor_membership.pk not in owners:
            raise NotAllowed("Only owners can change roles in this workspace.")
        current = Membership.objects.select_for_update().filter(pk=membership.pk).first()
        if current is None:
            raise NotAllowed("That person is no longer a member of this workspace.")
        if current.role == Membership.Role.OWNER and role != Membership.Role.OWNER and owners == [current.pk]:
            raise LastOwner("A workspace needs at least one owner; make someone else an owner first.")
        if current.role != role:
            Membership.objects.filter(pk=current.pk).update(role=role)
            _bump_after_commit()
    membership.role = role
    return membership


def _move_off_workspace(*, user_id: int, workspace_id: int) -> None:
    """A removed member whose current workspace it was falls back to their oldest remaining one."""
    fallback = (
        Membership.objects.filter(user_id=user_id).order_by("workspace_id").values_list("workspace_id", flat=True)
    ).first()
    User.objects.filter(pk=user_id, current_workspace_id=workspace_id).update(current_workspace_id=fallback)


def set_openrouter_key(*, user: User, key: str) -> OpenRouterKey:
    """Save or replace the user's OpenRouter key once OpenRouter has accepted it, encrypted; only its
    last four characters and what OpenRouter said about it (label, limit) stay readable.

    Raises an OpenRouterKeyError (malformed, rejected, or OpenRouter unavailable) and saves nothing:
    a key that could not be checked is never stored. The check runs before, not inside, the transaction.
    """
    key = openrouter_keys.ensure_key_format(key)
    info = openrouter_keys.check_openrouter_key(key)
    now = timezone.now()
    with transaction.atomic():
        stored, _ = OpenRouterKey.objects.update_or_create(
            user=user,
            defaults={
                "encrypted_key": encrypt_secret(key),
                "last4": key[-4:],
                "updated_at": now,
                "label": info.label,
                "credit_limit": info.credit_limit,
                "credit_remaining": info.credit_remaining,
                "limit_reset": info.limit_reset,
                "verified_at": now,
            },
        )
        _bump_after_commit()
    return stored


def recheck_openrouter_key(*, user: User) -> OpenRouterKey | None:
    """Ask OpenRouter again about the saved key and store what it says now (label, remaining credit).
    None when no key is saved. A rejection is raised and the key is kept: only its owner removes it."""
    stored = OpenRouterKey.objects.filter(user=user).first()
    if stored is None:
        return None
    info = openrouter_keys.check_openrouter_key(decrypt_secret(stored.encrypted_key))
    stored.label, stored.credit_limit, stored.credit_remaining = info.label, info.credit_limit, info.credit_remaining
    stored.limit_reset, stored.verified_at = info.limit_reset, timezone.now()
    stored.save(update_fields=["label", "credit_limit", "credit_remaining", "limit_reset", "verified_at"])
    return stored


def remove_openrouter_key(*, user: User) -> bool:
    """Idempotent; True when a key was removed."""
    with transaction.atomic():
        deleted, _ = OpenRouterKey.objects.filter(user=user).delete()
        if deleted:
            _bump_after_commit()
    return bool(deleted)


def request_email_change(*, user: User, new_email: str, confirm_url: Callable[[str], str]) -> EmailChange:
    """Mail a signed confirmation link to `new_email` and a notice to the current address. Nothing
    changes until the link is confirmed (see confirm_email_change). `confirm_url` turns a token into
    the absolute link."""
    new_email = User.normalize_username(new_email)
    if new_email == user.email:
        raise EmailTaken("That is already your email address.")
    if User.objects.filter(email__iexact=new_email).exists():
        raise EmailTaken("Another account uses that email address.")
    change = EmailChange(user_id=user.pk, old_email=user.email, new_email=new_email)
    token = signing.dumps({"u": change.user_id, "o": change.old_email, "n": change.new_email}, salt=EMAIL_CHANGE_SALT)
    hours = settings.PASSWORD_RESET_TIMEOUT // 3600
    send_mail(
        subject="Confirm your new email address for Writingmate",
        message=render_to_string(
            "accounts/email/email_change_confirm.txt", {"change": change, "link": confirm_url(token), "hours": hours}
        ),
        from_email=None,
        recipient_list=[change.new_email],
    )
    send_mail(
        subject="Someone asked to change your Writingmate email address",
        message=render_to_string("accounts/email/email_change_requested.txt", {"change": change, "hours": hours}),
        from_email=None,
        recipient_list=[change.old_email],
    )
    return change


def read_email_change(*, user: User, token: str) -> EmailChange:
    """The change a link asks for, if it is genuine, fresh, for `user` and still applicable."""
    try:
        data = signing.loads(token, salt=EMAIL_CHANGE_SALT, max_age=settings.PASSWORD_RESET_TIMEOUT)
        change = EmailChange(user_id=int(data["u"]), old_email=str(data["o"]), new_email=str(data["n"]))
    except signing.SignatureExpired as exc:
        raise EmailChangeInvalid("This link has expired. Ask for a new one from Settings.") from exc
    except (signing.BadSignature, KeyError, TypeError, ValueError) as exc:
        raise EmailChangeInvalid("This link is not valid. Ask for a new one from Settings.") from exc
    if change.user_id != user.pk:
        raise EmailChangeInvalid("This link belongs to another account. Sign in as that account to use it.")
    if user.email != change.old_email:
        # Also what makes a link single-use: once the change is made, the old address no longer matches.
        raise EmailChangeInvalid("Your email address has changed since this link was sent; it no longer works.")
    return change


def confirm_email_change(*, user: User, token: str) -> EmailChange:
    """Apply the change a confirmation link asks for; the old address is told afterwards."""
    change = read_email_change(user=user, token=token)
    try:
        with transaction.atomic():
            updated = User.objects.filter(pk=user.pk, email=change.old_email).update(email=change.new_email)
    except IntegrityError as exc:
        raise EmailTaken("Another account started using that email address; it cannot be yours too.") from exc
    if not updated:
        raise EmailChangeInvalid("Your email address has changed since this link was sent; it no longer works.")
    user.email = change.new_email
    send_mail(
        subject="Your Writingmate email address was changed",
        message=render_to_string("accounts/email/email_changed.txt", {"change": change}),
        from_email=None,
        recipient_list=[change.old_email],
    )
    return change
