"""Refresh the catalogue from OpenRouter's model list: add what is new (disabled), update names and
context lengths, never delete. Idempotent: a second run with the same list changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from django.db import transaction

from gateway.models import CatalogueModel

logger = logging.getLogger(__name__)

SYNC_CONNECT_TIMEOUT_SECONDS = 5.0
SYNC_READ_TIMEOUT_SECONDS = 30.0
# New upstream models start disabled and in the premium tier: staff choose what /v1 offers, and a
# model nobody reviewed never lands in the free plan.
NEW_MODEL_TIER = "premium"
_SLUG_MAX: int = CatalogueModel._meta.get_field("slug").max_length or 0
_NAME_MAX = CatalogueModel._meta.get_field("display_name").max_length


class ModelSyncError(Exception):
    """The model list could not be used (bad status, bad body); retrying will not help."""


class ModelSyncUnavailable(ModelSyncError):
    """OpenRouter was unreachable, slow or answered 429/5xx; worth retrying later."""


@dataclass(frozen=True)
class SyncResult:
    url: str
    seen: int
    added: int
    updated: int
    unchanged: int
    skipped: int

    def summary(self) -> str:
        return (
            f"Synced {self.seen} models from {self.url}: {self.added} added (disabled), {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.skipped} skipped."
        )


def fetch_openrouter_models() -> tuple[str, list[dict[str, Any]]]:
    """GET {OPENROUTER_BASE_URL}/models; returns the URL and its `data` list."""
    url = f"{settings.OPENROUTER_BASE_URL}/models"
    headers = {"Accept": "application/json"}
    if settings.OPENROUTER_API_KEY:
        headers["Authorization"] = f"Bearer {settings.OPENROUTER_API_KEY}"
    try:
        response = requests.get(
            url,
            headers=headers,
            timeout=(SYNC_CONNECT_TIMEOUT_SECONDS, SYNC_READ_TIMEOUT_SECONDS),
            # A redirect would carry our Authorization header somewhere we did not choose.
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise ModelSyncUnavailable(f"GET {url} failed: {exc.__class__.__name__}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise ModelSyncUnavailable(f"GET {url} answered {response.status_code}")
    if response.status_code != 200:
        raise ModelSyncError(f"GET {url} answered {response.status_code}")
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelSyncError(f"GET {url} did not return {{'data': [...]}}") from exc
    if not isinstance(data, list):
        raise ModelSyncError(f"GET {url} did not return a list of models")
    return url, data


def _clean(entry: Any) -> tuple[str, str, int | None, dt.datetime | None] | None:
    """(id, name, context_length, created) of a usable entry, or None to skip it."""
    if not isinstance(entry, dict):
        return None
    slug = entry.get("id")
    if not isinstance(slug, str) or not slug.strip() or len(slug) > _SLUG_MAX:
        return None
    name = entry.get("name")
    name = name.strip()[:_NAME_MAX] if isinstance(name, str) and name.strip() else slug
    context_length = entry.get("context_length")
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length <= 0:
        context_length = None
    created = entry.get("created")
    created_at = dt.datetime.fromtimestamp(created, tz=dt.UTC) if isinstance(created, int) and created > 0 else None
    return slug.strip(), name, context_length, created_at


def sync_models() -> SyncResult:
    url, data = fetch_openrouter_models()
    upstream: dict[str, tuple[str, int | None, dt.datetime | None]] = {}
    skipped = 0
    for entry in data:
        cleaned = _clean(entry)
        if cleaned is None:
            skipped += 1
            continue
        slug, name, context_length, created_at = cleaned
        upstream[slug] = (name, context_length, created_at)

    added = updated = unchanged = 0
    with transaction.atomic():
        # Only OpenRouter rows are refreshed; demo and transcription rows are ours. A row matches on
        # the name OpenRouter knows it by, which is its slug unless upstream_model says otherwise.
        existing = list(CatalogueModel.objects.select_for_update().filter(provider=CatalogueModel.Provider.OPENROUTER))
        known_slugs = set(CatalogueModel.objects.values_list("slug", flat=True))
        to_update = []
        matched: set[str] = set()
        for row in existing:
            if row.upstream_name not in upstream:
                continue
            matched.add(row.upstream_name)
            name, context_length, _ = upstream[row.upstream_name]
            if row.display_name == name and (context_length is None or row.context_length == context_length):
                unchanged += 1
                continue
            row.display_name = name
            if context_length is not None:
                row.context_length = context_length
            to_update.append(row)
        CatalogueModel.objects.bulk_update(to_update, ["display_name", "context_length", "updated_at"])
        updated = len(to_update)

        new_rows = [
            CatalogueModel(
                slug=slug,
                display_name=name,
                provider=CatalogueModel.Provider.OPENROUTER,
                kind=CatalogueModel.Kind.CHAT,
                tier=NEW_MODEL_TIER,
                owned_by=slug.split("/", 1)[0] if "/" in slug else "",
                context_length=context_length,
                enabled=False,
                **({"created": created_at} if created_at else {}),
            )
            for slug, (name, context_length, created_at) in upstream.items()
            if slug not in matched and slug not in known_slugs
        ]
        # ignore_conflicts: a row created concurrently (admin, another sync) wins; we add it next time.
        CatalogueModel.objects.bulk_create(new_rows, ignore_conflicts=True)
        added = len(new_rows)
        skipped += len(upstream) - len(matched) - added

    result = SyncResult(url=url, seen=len(data), added=added, updated=updated, unchanged=unchanged, skipped=skipped)
    logger.info("model sync: %s", result.summary())
    return result
