"""Which catalogue model an Anthropic model id means: a catalogue slug, or an alias staff edit in admin.

Aliases are held in memory like the catalogue and reloaded as often, so resolving runs no query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from accounts.access import WorkspaceAccess
from apikeys.services import KeyGrant
from gateway import catalogue
from gateway.catalogue import CatalogueEntry
from gateway.errors import ApiError, invalid_request
from gateway.models import CatalogueModel, ModelAlias
from gateway.surfaces.anthropic.errors import not_found_model
from writingmate.db import run_db


@dataclass(frozen=True)
class _Alias:
    target: str
    fallback: str | None
    stands_in: bool = False
    max_output_tokens: int | None = None


class Resolved(NamedTuple):  # built per request: a frozen dataclass's __init__ costs twice a tuple's
    """The catalogue model serving a request, and how its request is adapted (ModelAlias.stands_in)."""

    entry: CatalogueEntry
    stands_in: bool = False
    max_output_tokens: int | None = None


_aliases: dict[str, _Alias] = {}
_loaded_at = float("-inf")


def _load() -> dict[str, _Alias]:
    rows = ModelAlias.objects.values_list("alias", "target__slug", "fallback__slug", "stands_in", "max_output_tokens")
    return {
        alias: _Alias(target=target, fallback=fallback, stands_in=stands_in, max_output_tokens=cap)
        for alias, target, fallback, stands_in, cap in rows
    }


async def _alias_table() -> dict[str, _Alias]:
    global _aliases, _loaded_at
    if time.monotonic() - _loaded_at > catalogue.CATALOGUE_REFRESH_SECONDS:
        _aliases = await run_db(_load)
        _loaded_at = time.monotonic()
    return _aliases


def forget_aliases() -> None:
    global _loaded_at
    _loaded_at = float("-inf")


def is_claude(entry: CatalogueEntry) -> bool:
    """Claude models go to the upstream's own Messages API; every other model through chat completions."""
    return entry.provider == CatalogueModel.Provider.OPENROUTER and entry.upstream_name.startswith("anthropic/")


def _not_in_plan(model: str, workspace: WorkspaceAccess) -> ApiError:
    return ApiError(
        f"model: {model} is not included in the {workspace.plan_name} plan of workspace "
        f"{workspace.workspace_id}. Upgrade the plan or pick a model from /api/anthropic/v1/models.",
        status=403,
        param="model",
        code="model_not_allowed",
    )


async def resolve_model(model: object, workspace: WorkspaceAccess, *, key: KeyGrant | None = None) -> Resolved:
    """The catalogue entry serving `model` for this workspace (and key), or a 400 / 403 / 404 naming it.

    An alias's fallback serves when the plan, or the key's own model allowlist, excludes its target.
    """
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required", param="model")
    entries = await catalogue.enabled_models()
    entry = entries.get(model)
    if entry is None or entry.kind != CatalogueModel.Kind.CHAT:
        alias = (await _alias_table()).get(model)
        if alias is None:
            raise not_found_model(model)
        candidates = [entries.get(alias.target), entries.get(alias.fallback) if alias.fallback else None]
        in_plan = [c for c in candidates if c is not None and workspace.allows_model(slug=c.slug, tier=c.tier)]
        for candidate in in_plan:
            if key is None or key.allows_model(candidate.slug):
                return Resolved(candidate, stands_in=alias.stands_in, max_output_tokens=alias.max_output_tokens)
        if in_plan and key is not None:
            catalogue.ensure_key_allows(in_plan[0], key=key, requested=model)
        if not any(candidates):
            raise not_found_model(model)
        raise _not_in_plan(model, workspace)
    if not workspace.allows_model(slug=entry.slug, tier=entry.tier):
        raise _not_in_plan(model, workspace)
    if key is not None:
        catalogue.ensure_key_allows(entry, key=key, requested=model)
    return Resolved(entry)
