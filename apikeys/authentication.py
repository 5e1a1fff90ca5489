"""Bearer-key authentication for /v1: one DRF authentication class, async.

A key resolves to its grant with one cache round trip (the grant, the access epoch and the key's
known-valid mark together) and touches the database only on a miss, or when Redis is unavailable.
Endpoints that reserve quota may go further (`allow_unconfirmed`): a grant this process read recently
is used from memory, and the reservation confirms its access epoch in its own round trip
(billing.quotas), so a revoked key or a changed plan still takes effect on the very next request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from accounts.access import ACCESS_EPOCH_KEY, WorkspaceAccess, local_access_epoch
from apikeys import keys, throttling
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


def _presented_key(authorization: str | None, missing_message: str) -> str:
    if not authorization:
        raise InvalidApiKey(missing_message)
    scheme, _, presented = authorization.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise InvalidApiKey(missing_message)
    return presented


def incorrect_key(presented: str) -> InvalidApiKey:
    """One body for unknown, malformed, revoked and expired keys: it must not tell them apart."""
    return InvalidApiKey(f"Incorrect API key provided: {_masked(presented)}. Check the key in Settings → API Keys.")


def _current(grant: KeyGrant | None) -> KeyGrant | None:
    """`grant` while its key has not expired (checked per request: a cached grant outlives expiry)."""
    if grant is None or (grant.expires_at is not None and grant.expires_at <= time.time()):
        return None
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


def forget_cached_grants() -> None:
    """Drop this process's grant caches (tests; Redis-held grants expire or die with the access epoch)."""
    global _local_cache, _remembered_grants
    _local_cache, _remembered_grants = _LocalGrantCache(), _LocalGrantCache()


async def _touch_if_due(key_id: int, due: bool) -> None:
    if due:
        run_in_background(run_db(touch_last_used, key_id=key_id))


async def resolve_grant(
    presented: str, *, allow_unconfirmed: bool = False, before_lookup: Callable[[], None]
) -> tuple[KeyGrant | None, int | None]:
    """(the presented key's current grant or None, the access epoch still to be confirmed or None).

    `before_lookup()` runs before the database is asked about a key no cache vouches for (a cached
    grant, a key known valid): it raises to refuse the lookup (the invalid-key throttle).
    """
    if not keys.is_well_formed(presented):
        before_lookup()  # no lookup, but a flood of junk still counts as bad keys
        return None, None
    key_hash = keys.hash_key(presented)
    client = async_redis()
    if client is None:
        hit, grant = _local_cache.get(key_hash)
        if not hit:
            if not throttling.is_known_locally(key_hash):
                before_lookup()
            epoch = local_access_epoch()
            grant = await run_db(find_key_grant, key_hash=key_hash)
            _local_cache.put(key_hash, epoch, grant)
        elif grant is None:
            before_lookup()
        if (current := _current(grant)) is None:
            return None, None
        throttling.remember_known_locally(key_hash)
        await _touch_if_due(current.key_id, _local_cache.should_touch(current.key_id))
        return current, None

    if allow_unconfirmed and (remembered := _remembered_grants.remembered(key_hash)) is not None:
        epoch, grant = remembered
        if _current(grant) is not None:  # else let a confirmed read refuse it
            await _note_use(client, grant)
            return grant, epoch

    try:
        cached, raw_epoch, known = await client.mget(
            _GRANT_KEY + key_hash, ACCESS_EPOCH_KEY, throttling.KNOWN_KEY_PREFIX + key_hash
        )
    except Exception:
        logger.warning("Redis unavailable for key lookup; reading the database instead", exc_info=True)
        if _remembered_grants.remembered(key_hash) is None and not throttling.is_known_locally(key_hash):
            before_lookup()
        if (current := _current(await run_db(find_key_grant, key_hash=key_hash))) is None:
            return None, None
        await _touch_if_due(current.key_id, _local_cache.should_touch(current.key_id))
        return current, None

    epoch = int(raw_epoch or 0)
    entry = json.loads(cached) if cached else None
    if entry is not None and entry["epoch"] == epoch:
        grant = KeyGrant.from_dict(entry["grant"]) if entry["grant"] else None
        if grant is None:
            before_lookup()  # a key already found bad: no lookup, and it counts against its address
    else:
        if not known and _remembered_grants.remembered(key_hash) is None:
            before_lookup()
        grant = await run_db(find_key_grant, key_hash=key_hash)
        payload = json.dumps({"epoch": epoch, "grant": grant.to_dict() if grant else None})
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(_GRANT_KEY + key_hash, payload, ex=settings.API_KEY_CACHE_SECONDS)
                if grant is not None:
                    pipe.set(throttling.KNOWN_KEY_PREFIX + key_hash, b"1", ex=throttling.KNOWN_KEY_DAYS * 86400)
                await pipe.execute()
        except Exception:
            logger.warning("could not cache a key grant in Redis", exc_info=True)
    if grant is not None:
        _remembered_grants.put(key_hash, epoch, grant)
    if (current := _current(grant)) is None:
        return None, None
    await _note_use(client, current)
    return current, None


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


@dataclass(frozen=True)
class ApiUser:
    """`request.user` on /v1: who the key belongs to, without loading the User row."""

    pk: int
    is_authenticated: bool = True
    is_active: bool = True


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by developer key, async: run by gateway.core.api_view.AsyncApiView.

    Returns (ApiUser, ApiCaller) or raises: /v1 has one scheme, so a missing key is a 401 with
    OpenAI's message rather than an anonymous request. Before it asks the database about a key no
    cache vouches for, it runs the view's throttles (apikeys.throttling.InvalidKeyThrottle).
    """

    missing_key_message = _MISSING_KEY_MESSAGE

    def presented_authorization(self, request: Request) -> str | None:
        """The credential as `Bearer <key>`; a surface whose clients send it elsewhere overrides this."""
        return request.META.get("HTTP_AUTHORIZATION")

    async def authenticate_async(
        self, request: Request, *, allow_unconfirmed: bool = False
    ) -> tuple[ApiUser, ApiCaller]:
        """`allow_unconfirmed`: the view reserves quota, which confirms a remembered grant's epoch."""
        presented = _presented_key(self.presented_authorization(request), self.missing_key_message)
        view = request.parser_context.get("view")

        def before_lookup() -> None:
            if view is not None:
                view.check_throttles(request)

        grant, unconfirmed_epoch = await resolve_grant(
            presented, allow_unconfirmed=allow_unconfirmed, before_lookup=before_lookup
        )
        if grant is None:
            await throttling.note_invalid_key(throttling.client_address(request))
            raise incorrect_key(presented)
        workspace_header = request.META.get("HTTP_X_WRITINGMATE_WORKSPACE")
        if unconfirmed_epoch is None:
            caller = ApiCaller(grant=grant, workspace=select_workspace(grant, workspace_header))
        else:
            try:
                caller = ApiCaller(
                    grant=grant,
                    workspace=select_workspace(grant, workspace_header),
                    unconfirmed_epoch=unconfirmed_epoch,
                )
            except WorkspaceAccessDenied:
                # The remembered grant may predate a new membership: only a confirmed grant may refuse.
                return await self.authenticate_async(request)
        return ApiUser(pk=grant.user_id), caller

    def authenticate(self, request: Request) -> tuple[ApiUser, ApiCaller] | None:
        raise ImproperlyConfigured("ApiKeyAuthentication is async: serve the view with AsyncApiView.")

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="writingmate"'
