"""The enabled catalogue, held in memory and reloaded every few seconds, so /v1 runs no query for it.

Edits in admin (enabling, disabling, tiers) reach every process within CATALOGUE_REFRESH_SECONDS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from accounts.access import WorkspaceAccess
from apikeys.services import KeyGrant
from gateway import errors
from gateway.models import CatalogueModel
from writingmate.db import run_db

CATALOGUE_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class CatalogueEntry:
    slug: str
    display_name: str
    provider: str
    kind: str
    upstream_name: str
    tier: str
    owned_by: str
    created: int
    allow_routing_params: bool

    @property
    def is_demo(self) -> bool:
        return self.provider == CatalogueModel.Provider.DEMO


_entries: dict[str, CatalogueEntry] = {}
_loaded_at = float("-inf")


def _load() -> dict[str, CatalogueEntry]:
    rows = CatalogueModel.objects.enabled()
    if not settings.DEMO_PROVIDER_ENABLED:
        rows = rows.exclude(provider=CatalogueModel.Provider.DEMO)
    return {
        row.slug: CatalogueEntry(
            slug=row.slug,
            display_name=row.display_name,
            provider=row.provider,
            kind=row.kind,
            upstream_name=row.upstream_name,
            tier=row.tier,
            owned_by=row.owned_by or row.slug.split("/", 1)[0],
            created=int(row.created.timestamp()),
            allow_routing_params=row.allow_routing_params,
        )
        for row in rows
    }


async def enabled_models() -> dict[str, CatalogueEntry]:
    global _entries, _loaded_at
    if time.monotonic() - _loaded_at > CATALOGUE_REFRESH_SECONDS:
        _entries = await run_db(_load)
        _loaded_at = time.monotonic()
    return _entries


def forget_catalogue() -> None:
    global _loaded_at
    _loaded_at = float("-inf")


async def models_for(workspace: WorkspaceAccess, *, key: KeyGrant | None = None) -> list[CatalogueEntry]:
    """The models the workspace's plan allows, and the key's allowlist, if it has one (a model the key may
    not use is not listed: clients pick from this list)."""
    entries = await enabled_models()
    return [
        entry
        for entry in entries.values()
        if workspace.allows_model(slug=entry.slug, tier=entry.tier) and (key is None or key.allows_model(entry.slug))
    ]


async def ensure_model_allowed(
    *, slug: object, workspace: WorkspaceAccess, kind: str, key: KeyGrant | None = None
) -> CatalogueEntry:
    """The catalogue entry for `slug`, or the 404 / 403 that OpenAI clients expect."""
    if not isinstance(slug, str) or not slug:
        raise errors.invalid_request(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    entry = (await enabled_models()).get(slug)
    if entry is None or entry.kind != kind:
        raise errors.model_not_found(slug)
    if not workspace.allows_model(slug=entry.slug, tier=entry.tier):
        raise errors.ApiError(
            f"The model `{slug}` is not included in the {workspace.plan_name} plan of workspace "
            f"{workspace.workspace_id}. Upgrade the plan or pick a model from /v1/models.",
            status=403,
            param="model",
            code="model_not_allowed",
        )
    if key is not None:
        ensure_key_allows(entry, key=key, requested=slug)
    return entry


def ensure_key_allows(entry: CatalogueEntry, *, key: KeyGrant, requested: str) -> None:
    """The 403 for a model outside the developer key's allowlist (set by its owner), naming the key."""
    if key.allows_model(entry.slug):
        return
    raise errors.ApiError(
        f"The model `{requested}` is not in the model allowlist of the developer key {key.key_prefix}… "
        f"(it allows {', '.join(key.allowed_models)}). The key's owner can change the allowlist in "
        "Settings → API Keys; other keys of the workspace are not affected.",
        status=403,
        param="model",
        code="model_not_allowed_for_key",
    )
