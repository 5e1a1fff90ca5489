"""What a user may do on /v1, as one cacheable snapshot, and the epoch that invalidates every snapshot.

Any change to memberships, plans, licences or BYOK keys bumps the epoch; the API reads the epoch in
the same round trip as its cached snapshot, or, for a snapshot it remembers in memory, in the same
round trip as the request's quota reservation, so such changes take effect on the next request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field

from django.db.models import Prefetch

from accounts.models import AppSumoLicence, Membership, OpenRouterKey, User
from writingmate.redis_connection import async_redis, sync_redis

logger = logging.getLogger(__name__)

ACCESS_EPOCH_KEY = "wm:access-epoch"


class AccessChanged(Exception):
    """A snapshot read at an older access epoch than Redis now holds (or one Redis cannot confirm)."""


_local_epoch = 0
_local_lock = threading.Lock()


@dataclass(frozen=True)
class WorkspaceAccess:
    workspace_id: int
    workspace_name: str
    role: str
    plan_slug: str
    plan_name: str
    daily_message_limit: int | None
    member_daily_message_limit: int | None
    allowed_model_tiers: tuple[str, ...]
    allowed_model_slugs: tuple[str, ...]
    licence_id: int | None = None
    licence_tier: str | None = None
    licence_daily_message_limit: int | None = None
    licence_monthly_message_limit: int | None = None
    # Defaults to False so a snapshot cached before the field existed grants nothing new.
    includes_web_search: bool = False

    def allows_model(self, *, slug: str, tier: str) -> bool:
        return tier in self.allowed_model_tiers or slug in self.allowed_model_slugs


@dataclass(frozen=True)
class UserAccess:
    user_id: int
    current_workspace_id: int | None
    workspaces: dict[int, WorkspaceAccess] = field(default_factory=dict)
    byok_ciphertext: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UserAccess:
        workspaces = {
            int(wid): WorkspaceAccess(
                **{
                    **ws,
                    "allowed_model_tiers": tuple(ws["allowed_model_tiers"]),
                    "allowed_model_slugs": tuple(ws["allowed_model_slugs"]),
                }
            )
            for wid, ws in data["workspaces"].items()
        }
        return cls(
            user_id=data["user_id"],
            current_workspace_id=data["current_workspace_id"],
            workspaces=workspaces,
            byok_ciphertext=data["byok_ciphertext"],
        )


def load_user_access(*, user_id: int) -> UserAccess | None:
    """Read the snapshot from the database; None for an unknown or inactive user."""
    user = User.objects.filter(pk=user_id, is_active=True).only("id", "current_workspace_id").first()
    if user is None:
        return None
    active_licences = Prefetch(
        "workspace__appsumo_licences",
        queryset=AppSumoLicence.objects.filter(deactivated_at__isnull=True).select_related("tier"),
        to_attr="active_licences",
    )
    memberships = (
        Membership.objects.filter(user_id=user_id, workspace__deactivated_at__isnull=True)
        .select_related("workspace__plan")
        .prefetch_related(active_licences)
    )
    workspaces = {}
    for membership in memberships:
        workspace, plan = membership.workspace, membership.workspace.plan
        licences = getattr(workspace, "active_licences", [])  # prefetch_related's to_attr
        licence = licences[0] if licences else None
        workspaces[workspace.pk] = WorkspaceAccess(
            workspace_id=workspace.pk,
            workspace_name=workspace.name,
            role=membership.role,
            plan_slug=plan.slug,
            plan_name=plan.name,
            daily_message_limit=plan.daily_message_limit,
            member_daily_message_limit=plan.member_daily_message_limit,
            allowed_model_tiers=tuple(plan.allowed_model_tiers),
            allowed_model_slugs=tuple(plan.allowed_model_slugs),
            includes_web_search=plan.includes_web_search,
            licence_id=licence.pk if licence else None,
            licence_tier=licence.tier.slug if licence else None,
            licence_daily_message_limit=licence.tier.daily_message_limit if licence else None,
            licence_monthly_message_limit=licence.tier.monthly_message_limit if licence else None,
        )
    byok = OpenRouterKey.objects.filter(user_id=user_id).values_list("encrypted_key", flat=True).first()
    return UserAccess(
        user_id=user.pk, current_workspace_id=user.current_workspace_id, workspaces=workspaces, byok_ciphertext=byok
    )


def bump_access_epoch() -> None:
    """Invalidate every cached snapshot. Call after any change that affects what a user may do."""
    global _local_epoch
    with _local_lock:
        _local_epoch += 1
    client = sync_redis()
    if client is not None:
        try:
            client.incr(ACCESS_EPOCH_KEY)
        except Exception:
            # The API falls back to the database while Redis is away, so nothing stale is served.
            logger.warning("could not bump the access epoch in Redis", exc_info=True)


def local_access_epoch() -> int:
    return _local_epoch


async def confirm_access_epoch(epoch: int) -> None:
    """Raise AccessChanged unless Redis still holds `epoch`, i.e. no access changed since it was read."""
    client = async_redis()
    if client is None:
        raise AccessChanged("no Redis holds the access epoch")
    try:
        current = await client.get(ACCESS_EPOCH_KEY)
    except Exception as exc:
        raise AccessChanged("the access epoch could not be read") from exc
    if int(current or 0) != epoch:
        raise AccessChanged(f"access epoch {epoch} is no longer current")
