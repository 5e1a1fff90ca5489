"""DRF parsers for /v1 bodies, failing in OpenAI's error shape.

The lean handler (gateway.asgi) has already read the whole body within its cap, so these parse bytes
in memory (JSON) or Django's spooled file (multipart); they never decide how much to read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.parsers import BaseParser, DataAndFiles, MultiPartParser

from gateway.errors import ApiError, invalid_request, unsupported_media_type


def invalid_json() -> ApiError:
    return invalid_request(
        "We could not parse the JSON body of your request. The body must be a JSON object.", code="invalid_json"
    )


class JsonObjectParser(BaseParser):
    """A JSON object, as `dict`; anything else (an array, bad UTF-8, deep nesting) is a 400 invalid_json.

    Any media type naming JSON (`application/json`, `application/*+json`, `text/json`) or none at all
    is parsed, as before DRF ran /v1; another type is a 415.
    """

    media_type = "*/*"

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> dict:
        if media_type and "json" not in media_type.split(";", 1)[0].lower():
            raise unsupported_media_type(media_type, "application/json")
        try:
            body = json.loads(stream.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise invalid_json() from None
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object.", code="invalid_json")
        return body


class MultipartFormParser(MultiPartParser):
    """Django's multipart parser (files spooled to disk past FILE_UPLOAD_MAX_MEMORY_SIZE); 400 if broken."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> DataAndFiles:
        context = parser_context or {}
        request = context["request"]
        meta = {**request.META, "CONTENT_TYPE": media_type}
        encoding = context.get("encoding") or settings.DEFAULT_CHARSET
        try:
            data, files = DjangoMultiPartParser(meta, stream, request.upload_handlers, encoding).parse()
        except (MultiPartParserError, SuspiciousOperation) as exc:
            raise ApiError(
                f"The multipart body could not be parsed: {exc}", status=400, code="invalid_multipart"
            ) from None
        return DataAndFiles(data, files)
