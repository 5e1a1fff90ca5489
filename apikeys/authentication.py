"""Bearer-key authentication for /v1: a DRF authentication class with an async fast path.

The fast path resolves a key to its grant with one cache round trip (the grant and the access epoch
together) and touches the database only on a miss, or when Redis is unavailable. Endpoints that
reserve quota may go further (`allow_unconfirmed`): a grant this process read recently is used from
memory, and the reservation confirms its access epoch in its own round trip (billing.quotas), so a
revoked key or a changed plan still takes effect on the very next request.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.access import ACCESS_EPOCH_KEY, WorkspaceAccess, local_access_epoch
from accounts.models import User
from apikeys import keys
from apikeys.services import KeyGrant, find_key_grant, touch_last_used
from writingmate.background import run_in_background
from writingmate.db import run_db
from writingmate.redis_connection import async_redis

logger = logging.getLogger(__name__)


LAST_USED_INTERVAL_SECONDS = 60
_GRANT_KEY = "wm:grant:"
_LAST_USED_KEY = "wm:last-used:"
_MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create a Writingmate developer key "
    "in Settings → API Keys."
)


class InvalidApiKey(exceptions.AuthenticationFailed):
    default_code = "invalid_api_key"


class WorkspaceAccessDenied(exceptions.PermissionDenied):
    default_code = "workspace_access_denied"
    grant: KeyGrant | None = None  # the valid key's grant, so the refusal is recorded against it


def _workspace_denied(grant: KeyGrant, message: str) -> WorkspaceAccessDenied:
    denied = WorkspaceAccessDenied(message)
    denied.grant = grant
    return denied


@dataclass(frozen=True)
class ApiCaller:
    """The authenticated side of a /v1 request: which key, which user, which workspace."""

    grant: KeyGrant
    workspace: WorkspaceAccess
    # The access epoch the grant was read at when it came from memory unconfirmed; whatever reserves
    # quota for this caller must confirm it (billing.quotas.reserve_message does).
    unconfirmed_epoch: int | None = None

    @property
    def user_id(self) -> int:
        return self.grant.user_id

    @property
    def key_id(self) -> int:
        return self.grant.key_id

    @property
    def byok_ciphertext(self) -> str | None:
        return self.grant.access.byok_ciphertext


def _masked(presented: str) -> str:
    if len(presented) <= 8:
        return "*" * len(presented)
    return f"{presented[:4]}{'*' * 8}{presented[-4:]}"


def _presented_key(authorization: str | None) -> str:
    if not authorization:
        raise InvalidApiKey(_MISSING_KEY_MESSAGE)
    scheme, _, presented = authorization.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise InvalidApiKey(_MISSING_KEY_MESSAGE)
    if not keys.is_well_formed(presented):
        raise InvalidApiKey(f"Incorrect API key provided: {_masked(presented)}. Check the key in Settings → API Keys.")
    return presented


def _check_not_expired(grant: KeyGrant | None, presented: str) -> KeyGrant:
    if grant is None or (grant.expires_at is not None and grant.expires_at <= time.time()):
        raise InvalidApiKey(
            f"Incorrect API key provided: {_masked(presented)}. The key is unknown, revoked or expired."
        )
    return grant


def select_workspace(grant: KeyGrant, workspace_header: str | None) -> WorkspaceAccess:
    access = grant.access
    if workspace_header is None or not workspace_header.strip():
        workspace_id = access.current_workspace_id
        if workspace_id is None or workspace_id not in access.workspaces:
            # A user whose current workspace was deleted still has their other memberships.
            if not access.workspaces:
                raise _workspace_denied(grant, "Your account has no workspace. Create one in Settings → Workspaces.")
            workspace_id = min(access.workspaces)
        return access.workspaces[workspace_id]
    raw = workspace_header.strip()
    # isascii: str.isdigit() accepts digits such as "²" that int() refuses; ids fit in a bigint.
    is_id = raw.isascii() and raw.isdigit() and len(raw) <= 19
    workspace = access.workspaces.get(int(raw)) if is_id else None
    if workspace is None:
        raise _workspace_denied(
            grant, f"Workspace {raw[:40]!r} does not exist or you are not a member of it (x-writingmate-workspace)."
        )
    return workspace


class _LocalGrantCache:
    """Grants this process read, with the access epoch they were read at, for API_KEY_CACHE_SECONDS.

    Without Redis it is the grant cache (valid while the local epoch stands); with Redis, it holds
    the grants that `allow_unconfirmed` callers may use before their epoch is confirmed.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, int, KeyGrant | None]] = {}
        self._last_used: dict[int, float] = {}

    def get(self, key_hash: str) -> tuple[bool, KeyGrant | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic() or entry[1] != local_access_epoch():
            return False, None
        return True, entry[2]

    def remembered(self, key_hash: str) -> tuple[int, KeyGrant] | None:
        """(epoch read at, grant) of a known key read within the TTL, whatever the epoch is now."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic() or entry[2] is None:
            return None
        return entry[1], entry[2]

    def put(self, key_hash: str, epoch: int, grant: KeyGrant | None) -> None:
        if len(self._entries) > 50_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + settings.API_KEY_CACHE_SECONDS, epoch, grant)

    def should_touch(self, key_id: int) -> bool:
        now = time.monotonic()
        if now - self._last_used.get(key_id, -LAST_USED_INTERVAL_SECONDS) < LAST_USED_INTERVAL_SECONDS:
            return False
        self._last_used[key_id] = now
        return True


_local_cache = _LocalGrantCache()
_remembered_grants = _LocalGrantCache()


async def _touch_if_due(key_id: int, due: bool) -> None:
    if due:
        run_in_background(run_db(touch_last_used, key_id=key_id))


async def resolve_grant(presented: str, *, allow_unconfirmed: bool = False) -> tuple[KeyGrant, int | None]:
    """The presented key's grant, and the access epoch still to be confirmed for it (None if confirmed)."""
    key_hash = keys.hash_key(presented)
    client = async_redis()
    if client is None:
        hit, grant = _local_cache.get(key_hash)
        if not hit:
            epoch = local_access_epoch()
            grant = await run_db(find_key_grant, key_hash=key_hash)
            _local_cache.put(key_hash, epoch, grant)
        grant = _check_not_expired(grant, presented)
        await _touch_if_due(grant.key_id, _local_cache.should_touch(grant.key_id))
        return grant, None

    if allow_unconfirmed and (remembered := _remembered_grants.remembered(key_hash)) is not None:
        epoch, grant = remembered
        if grant.expires_at is None or grant.expires_at > time.time():  # else let a confirmed read refuse it
            await _note_use(client, grant)
            return grant, epoch

    try:
        cached, epoch = await client.mget(_GRANT_KEY + key_hash, ACCESS_EPOCH_KEY)
    except Exception:
        logger.warning("Redis unavailable for key lookup; reading the database instead", exc_info=True)
        grant = _check_not_expired(await run_db(find_key_grant, key_hash=key_hash), presented)
        await _touch_if_due(grant.key_id, _local_cache.should_touch(grant.key_id))
        return grant, None

    epoch = int(epoch or 0)
    grant: KeyGrant | None = None
    entry = json.loads(cached) if cached else None
    if entry is not None and entry["epoch"] == epoch:
        grant = KeyGrant.from_dict(entry["grant"]) if entry["grant"] else None
    else:
        grant = await run_db(find_key_grant, key_hash=key_hash)
        payload = json.dumps({"epoch": epoch, "grant": grant.to_dict() if grant else None})
        try:
            await client.set(_GRANT_KEY + key_hash, payload, ex=settings.API_KEY_CACHE_SECONDS)
        except Exception:
            logger.warning("could not cache a key grant in Redis", exc_info=True)
    if grant is not None:
        _remembered_grants.put(key_hash, epoch, grant)
    grant = _check_not_expired(grant, presented)
    await _note_use(client, grant)
    return grant, None


async def _note_use(client: aioredis.Redis, grant: KeyGrant) -> None:
    if _local_cache.should_touch(grant.key_id):
        # Once a minute per process at most, and the NX key makes it once a minute across processes.
        try:
            due = bool(
                await client.set(_LAST_USED_KEY + str(grant.key_id), b"1", nx=True, ex=LAST_USED_INTERVAL_SECONDS)
            )
        except Exception:
            due = True
        await _touch_if_due(grant.key_id, due)


async def authenticate_api_request(
    *, authorization: str | None, workspace_header: str | None, allow_unconfirmed: bool = False
) -> ApiCaller:
    """The caller, or InvalidApiKey / WorkspaceAccessDenied.

    `allow_unconfirmed`: the caller will reserve quota, which confirms a remembered grant's epoch.
    """
    presented = _presented_key(authorization)
    grant, unconfirmed_epoch = await resolve_grant(presented, allow_unconfirmed=allow_unconfirmed)
    if unconfirmed_epoch is None:
        return ApiCaller(grant=grant, workspace=select_workspace(grant, workspace_header))
    try:
        workspace = select_workspace(grant, workspace_header)
    except WorkspaceAccessDenied:
        # The remembered grant may predate a new membership: only a confirmed grant may refuse.
        return await authenticate_api_request(authorization=authorization, workspace_header=workspace_header)
    return ApiCaller(grant=grant, workspace=workspace, unconfirmed_epoch=unconfirmed_epoch)


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by developer key. The async gateway calls `authenticate_api_request`."""

    def authenticate(self, request: Request) -> tuple[object, ApiCaller] | None:
        header = get_authorization_header(request).decode("latin1")
        if not header.lower().startswith("bearer "):
            return None
        presented = _presented_key(header)
        grant = _check_not_expired(find_key_grant(key_hash=keys.hash_key(presented)), presented)
        caller = ApiCaller(
            grant=grant, workspace=select_workspace(grant, request.headers.get("x-writingmate-workspace"))
        )
        return User.objects.get(pk=grant.user_id), caller

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"
