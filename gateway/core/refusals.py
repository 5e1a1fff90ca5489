"""The gateway's side of the refusal record: who was refused, taken from the request, handed to billing.

Every surface calls `note_refused` where it renders an error (the OpenAI surface's error handling, the
Anthropic surface's), so each refused request is counted once, in `billing.refusals`.
"""

from __future__ import annotations

from django.http import HttpRequest

from apikeys import keys
from apikeys.authentication import ApiCaller, WorkspaceAccessDenied
from apikeys.throttling import address_bucket
from billing.refusals import note_refusal
from gateway.errors import ApiError


def is_refusal(status: int) -> bool:
    """Client errors and 503 (we could not check the key or the limits). Upstream failures (502) are
    recorded in the ledger as failed requests, not here."""
    return 400 <= status < 500 or status == 503


def presented_key_prefix(authorization: str | None) -> str:
    """What the audit may keep of the presented key: our visible prefix (wmk_ + 6), never more."""
    if not authorization:
        return ""
    _scheme, _, presented = authorization.strip().partition(" ")
    presented = presented.strip()
    if presented.startswith(keys.KEY_PREFIX):
        return presented[: keys.VISIBLE_PREFIX_LENGTH]
    # Something else (another service's key, say): only that it was not ours.
    return "(not wmk_)" if presented else ""


def _presented(meta: dict) -> str | None:
    # OpenAI's clients send `Authorization: Bearer`, Anthropic's `x-api-key`.
    if meta.get("HTTP_AUTHORIZATION"):
        return meta["HTTP_AUTHORIZATION"]
    return f"Bearer {meta['HTTP_X_API_KEY']}" if meta.get("HTTP_X_API_KEY") else None


def note_refused(
    request: HttpRequest, error: ApiError, *, caller: ApiCaller | None = None, cause: Exception | None = None
) -> None:
    """Count `error` (about to be sent for `request`) in the refusal record, if it is a refusal."""
    if not is_refusal(error.status):
        return
    grant = caller.grant if caller is not None else None
    workspace_id = caller.workspace.workspace_id if caller is not None else None
    if grant is None and isinstance(cause, WorkspaceAccessDenied):
        grant = cause.grant
    meta = request.META
    note_refusal(
        status=error.status,
        code=error.code,
        endpoint=getattr(request, "api_endpoint", ""),
        address=address_bucket(meta.get("REMOTE_ADDR") or ""),
        message=error.message,
        key_id=grant.key_id if grant is not None else None,
        key_prefix=grant.key_prefix if grant is not None else presented_key_prefix(_presented(meta)),
        user_id=grant.user_id if grant is not None else None,
        workspace_id=workspace_id,
        model=getattr(request, "api_model", "") or "",
    )


def note_refused_before_request(scope: dict, error: ApiError) -> None:
    """Count a refusal given before a Django request exists (headers or body too large): from the ASGI scope."""
    client = scope.get("client") or ("", 0)
    authorization = next(
        (value.decode("latin1") for name, value in scope.get("headers", ()) if name.lower() == b"authorization"), None
    )
    note_refusal(
        status=error.status,
        code=error.code,
        endpoint="",
        address=address_bucket(client[0] or ""),
        message=error.message,
        key_prefix=presented_key_prefix(authorization),
    )
