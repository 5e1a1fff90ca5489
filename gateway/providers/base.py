"""What every upstream provider speaks: OpenAI's wire format, as raw bytes in and out.

A provider gets a fully prepared call (the URL comes from settings, never from the client) and
returns the upstream's status, headers and either the whole body or an async iterator of raw
chunks. Streams are relayed byte for byte by gateway.core.streaming; providers never touch the ORM.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class ProviderError(Exception):
    """The upstream could not be reached or did not answer in time.

    `status` is what the client gets (502 for connection errors, 504 for timeouts); `retryable`
    says whether sending once more is safe: only when the request never left this process (the
    connection could not be opened), so the upstream cannot have seen the body.
    """

    def __init__(
        self, message: str, *, status: int = 502, retryable: bool = False, code: str = "upstream_error"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.code = code


@dataclass(frozen=True)
class UpstreamCall:
    path: str  # e.g. "/chat/completions", appended to the provider's configured base URL
    api_key: str
    request_id: str
    json_body: dict | None = None
    form_fields: Mapping[str, str | list[str]] = field(default_factory=dict)  # repeated fields as lists
    file_field: tuple[str, bytes | object, str] | None = None  # (filename, content or file, content type)
    stream: bool = False
    raw_body: bytes | None = None  # sent as it is instead of `json_body` (the Anthropic surface's passthrough)
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers, e.g. anthropic-version


@dataclass
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    chunks: AsyncGenerator[bytes, None] | None = None
    release: Callable[[bool], Awaitable[None]] | None = None  # called with `finished`

    async def close(self, *, finished: bool = False) -> None:
        """Release the connection; for an unfinished stream this aborts it, so the upstream stops.

        `finished`: the stream ended as it should (`[DONE]`), so the connection may be kept.
        """
        if self.release is not None:
            release, self.release = self.release, None
            await release(finished)
        if self.chunks is not None and hasattr(self.chunks, "aclose"):
            # Closed here, not left to the garbage collector (which hops through the loop to close it).
            await self.chunks.aclose()


class Provider(Protocol):
    name: str

    async def send(self, call: UpstreamCall) -> UpstreamResponse: ...
