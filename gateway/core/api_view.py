"""DRF's APIView with an async dispatch, for the /v1 surfaces served by gateway.asgi's lean handler.

DRF's own dispatch is synchronous: under ASGI it would cost a thread hop per request and hold a
thread for a whole stream. This one runs DRF's pipeline on the event loop, in DRF's order:
authentication (an async method, `authenticate_async`) -> permissions -> throttles -> the handler
(`async def get/post`) -> REST_FRAMEWORK's EXCEPTION_HANDLER for anything raised; only a method the
view lacks is refused first (a 405 needs no identity). Content
negotiation and versioning are skipped: /v1 speaks JSON and event streams only, and a DRF
`Response` is given its renderer in `finalize_response` and rendered by the handler.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.access import AccessChanged
from apikeys.authentication import ApiCaller, ApiKeyAuthentication
from gateway.core.api_request import api_request
from gateway.core.refusals import note_refused
from gateway.errors import ApiError, error_response


class AsyncApiView(APIView):
    """An APIView whose handlers are coroutines; `self.caller` is the authenticated key's caller.

    `endpoint` names the request in metrics and the ledger ("chat.completions"). `reserves_quota`:
    the handler reserves quota before anything else happens, so it may run on a grant remembered in
    memory whose access epoch the reservation confirms; if access changed meanwhile (AccessChanged),
    the handler runs again on a freshly read grant. Not with an Idempotency-Key: a replay reserves
    nothing, so nothing would confirm the epoch.
    """

    endpoint: ClassVar[str] = "unknown"
    endpoint_by_method: ClassVar[dict[str, str]] = {}  # where one view serves several ("GET": "...")
    reserves_quota: ClassVar[bool] = False
    # OPTIONS is left out: DRF's metadata view is synchronous, and no OpenAI client sends it.
    http_method_names: ClassVar[list[str]] = ["get", "post", "delete"]  # type: ignore[misc]
    caller: ApiCaller

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        self.args, self.kwargs = args, kwargs
        api_request(request).api_endpoint = self.endpoint_by_method.get(request.method or "", self.endpoint)
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers: dict[str, str] = {}
        try:
            method = (drf_request.method or "").lower()
            # A method this endpoint lacks needs no identity: 405 before the key is checked.
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise MethodNotAllowed(drf_request.method or "")
            may_remember = self.reserves_quota and "HTTP_IDEMPOTENCY_KEY" not in request.META
            await self.perform_authentication_async(drf_request, allow_unconfirmed=may_remember)
            self.check_permissions(drf_request)
            self.check_throttles(drf_request)
            try:
                response = await handler(drf_request, *args, **kwargs)
            except AccessChanged:
                # Nothing was held or sent upstream yet: start over on a freshly read grant.
                await self.perform_authentication_async(drf_request, allow_unconfirmed=False)
                response = await handler(drf_request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        return self.finalize_response(drf_request, response, *args, **kwargs)

    async def perform_authentication_async(self, request: Request, *, allow_unconfirmed: bool) -> None:
        """DRF's Request._authenticate, awaited: the first authenticator that answers wins."""
        # Unauthenticated until an authenticator says otherwise (the throttles read request.auth meanwhile).
        # `_authenticator` is what DRF's successful_authenticator reads; left unset, it would run the sync path.
        request._authenticator = None  # type: ignore[attr-defined]
        request.auth = None
        for authenticator in request.authenticators or ():
            if not isinstance(authenticator, ApiKeyAuthentication):
                raise ImproperlyConfigured("The API surfaces authenticate asynchronously: use ApiKeyAuthentication.")
            user, caller = await authenticator.authenticate_async(request, allow_unconfirmed=allow_unconfirmed)
            request._authenticator = authenticator  # type: ignore[attr-defined]
            request.user, request.auth = user, caller  # type: ignore[assignment]  # an ApiUser, not a User row
            self.caller = caller
            return
        request._not_authenticated()  # type: ignore[attr-defined]

    def refuse(self, error: ApiError, *, cause: Exception) -> HttpResponse:
        """The error response for a refused request (EXCEPTION_HANDLER calls it), noted in the refusal record."""
        note_refused(api_request(self.request), error, caller=getattr(self, "caller", None), cause=cause)
        return self.error_response(error)

    def error_response(self, error: ApiError) -> HttpResponse:
        """`error` in this surface's shape: OpenAI's here; a surface with its own shape overrides it."""
        return error_response(error)

    def raise_uncaught_exception(self, exc: Exception) -> NoReturn:
        raise exc  # gateway.asgi logs it and answers 500 in OpenAI's shape (no DEBUG pages on /v1)
