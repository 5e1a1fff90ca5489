"""The speech-to-text upstream: any OpenAI-compatible /audio/transcriptions (OpenAI, Groq, ...) at
settings.TRANSCRIPTION_BASE_URL, with its own key. The audio is streamed from its file, not copied."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
from django.conf import settings

from gateway.providers import http
from gateway.providers.base import UpstreamCall, UpstreamResponse


class _Borrowed(io.IOBase):
    """A view of the uploaded file that aiohttp may read but not close.

    aiohttp closes a file payload once it is sent; the upload belongs to Django, and a retry after a
    5xx must read it again from the start.
    """

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        raw.seek(0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        pass


def _file_payload(content: Any) -> Any:
    if isinstance(content, (bytes, bytearray, memoryview)):
        return content
    try:
        content.fileno()
    except (AttributeError, OSError):
        # An in-memory upload (Django keeps files up to 2.5 MB in memory): small, so bytes will do.
        content.seek(0)
        return content.read()
    return _Borrowed(content)  # on disk: aiohttp streams it in chunks with a known Content-Length


class TranscriptionProvider:
    name = "transcription"

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        form = aiohttp.FormData()
        for name, value in call.form_fields.items():
            # Repeated fields such as timestamp_granularities[] come as a list of values.
            for item in value if isinstance(value, (list, tuple)) else [value]:
                form.add_field(name, item)
        if call.file_field is not None:
            filename, content, content_type = call.file_field
            form.add_field("file", _file_payload(content), filename=filename, content_type=content_type)
        headers = {
            "Authorization": f"Bearer {call.api_key}",
            "Accept-Encoding": "identity",
            "X-Request-Id": call.request_id,
        }
        return await http.post(
            f"{settings.TRANSCRIPTION_BASE_URL}{call.path}", headers=headers, data=form, stream=False
        )
