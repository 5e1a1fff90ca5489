"""Speech to text (/v1/audio/transcriptions): check the upload, admit, route, send the audio upstream
straight from its file, and bill the request like any other.

Files over API_MAX_AUDIO_BYTES, empty files and formats the upstream does not take are refused
before anything is sent upstream.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings

from apikeys.authentication import ApiCaller
from billing.ledger import UsageRecord, count_for
from billing.recording import finish_request
from gateway.core.calls import Completion, GatewayCall, admit, observe_outcome, reserve, send_upstream, usage_record
from gateway.core.routing import route_transcription
from gateway.core.streaming import CallOutcome
from gateway.errors import ApiError, invalid_request
from gateway.providers.base import UpstreamCall

ENDPOINT = "audio.transcriptions"  # as recorded in the ledger
UPSTREAM_PATH = "/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# OpenAI's list, and the content type we declare upstream for each.
AUDIO_TYPES = {
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "mp3": "audio/mpeg",
    "mp4": "audio/mp4",
    "mpeg": "audio/mpeg",
    "mpga": "audio/mpeg",
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "webm": "audio/webm",
}
_SNIFF_BYTES = 12
_FORWARDED_FIELDS = (
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "include[]",
    "chunking_strategy",
)


@dataclass(frozen=True)
class AudioUpload:
    """The uploaded file as Django parsed it: in memory when small, spooled to disk otherwise."""

    filename: str
    content_type: str
    size: int
    file: BinaryIO


def sniff_audio_format(head: bytes) -> str | None:
    """The container a file's first bytes announce (one of AUDIO_TYPES' keys), or None."""
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML, the container of WebM
        return "webm"
    if head[4:8] == b"ftyp":  # ISO base media: mp4, m4a
        return "mp4"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"  # an ID3 tag, or an MPEG audio frame sync
    return None


def _check_upload(upload: AudioUpload) -> tuple[str, str]:
    """(filename to send upstream, its content type); every refusal names `file`."""
    if upload.size == 0:
        raise invalid_request("The audio file is empty.", param="file", code="empty_file")
    if upload.size > settings.API_MAX_AUDIO_BYTES:
        raise ApiError(
            f"The audio file is {upload.size} bytes; the limit is {settings.API_MAX_AUDIO_BYTES} bytes.",
            status=413,
            param="file",
            code="file_too_large",
        )
    upload.file.seek(0)
    sniffed = sniff_audio_format(upload.file.read(_SNIFF_BYTES))
    upload.file.seek(0)
    stem, extension = os.path.splitext(os.path.basename(upload.filename or ""))
    extension = extension.lstrip(".").lower()
    supported = ", ".join(sorted(AUDIO_TYPES))
    if extension and extension not in AUDIO_TYPES:
        raise invalid_request(
            f"Invalid file format '{extension}'. Supported formats: {supported}.",
            param="file",
            code="invalid_file_format",
        )
    if sniffed is None:
        raise invalid_request(
            f"The file does not look like audio in a supported format ({supported}).",
            param="file",
            code="invalid_file_format",
        )
    if not extension:
        # The upstream decides the format by the name; give it one that matches the content.
        return f"{stem or 'audio'}.{sniffed}", AUDIO_TYPES[sniffed]
    return f"{stem}.{extension}", AUDIO_TYPES[extension]


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _check_fields(fields: dict[str, list[str]]) -> dict[str, str | list[str]]:
    """The form fields the upstream gets (besides model and file), checked; unknown fields are dropped."""
    response_format = _single(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise invalid_request(
            f"Invalid value for 'response_format': {response_format!r}. Supported values: {', '.join(RESPONSE_FORMATS)}.",
            param="response_format",
            code="invalid_value",
        )
    temperature = _single(fields, "temperature")
    if temperature is not None:
        try:
            valid = 0 <= float(temperature) <= 1
        except ValueError:
            valid = False
        if not valid:
            raise invalid_request(
                f"Invalid value for 'temperature': {temperature!r}. It must be a number between 0 and 1.",
                param="temperature",
                code="invalid_value",
            )
    if (_single(fields, "stream") or "false").lower() not in ("false", "0"):
        raise invalid_request(
            "Streamed transcriptions are not supported; leave 'stream' unset.",
            param="stream",
            code="unsupported_parameter",
        )
    forwarded: dict[str, str | list[str]] = {"response_format": response_format}
    for name in _FORWARDED_FIELDS:
        values = fields.get(name)
        if values and name != "response_format":
            forwarded[name] = values if name.endswith("[]") else values[-1]
    return forwarded


def transcription_usage(body: bytes, response_format: str) -> dict:
    """The upstream's usage in the chat shape billing reads.

    Token usage maps input → prompt and output → completion. Duration usage, and the text formats
    that carry no usage at all, count 0 tokens: a success still counts one message.
    """
    usage = None
    if response_format in ("json", "verbose_json"):
        try:
            usage = json.loads(body).get("usage")
        except (ValueError, AttributeError):
            usage = None
    if isinstance(usage, dict) and usage.get("type") == "tokens":
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def create_transcription(
    *, caller: ApiCaller, fields: dict[str, list[str]], upload: AudioUpload | None, request_id: str
) -> GatewayCall:
    if upload is None:
        raise invalid_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    filename, content_type = _check_upload(upload)
    body: dict = {"model": _single(fields, "model")}
    forwarded = _check_fields(fields)
    body.update(forwarded)
    model, entry = await admit(caller=caller, body=body, check=lambda _: None, kind="transcription")
    route = route_transcription(entry=entry, caller=caller)
    reservation = await reserve(caller=caller, route=route, request_id=request_id)
    outcome = CallOutcome()

    def record() -> UsageRecord:
        return usage_record(
            caller=caller,
            route_byok=route.byok,
            model=model,
            endpoint=ENDPOINT,
            request_id=request_id,
            body={},
            outcome=outcome,
        )

    async def finish() -> None:
        counted = await finish_request(reservation=reservation, usage=record())
        observe_outcome(endpoint=ENDPOINT, model=model, outcome=outcome, counted=counted, byok=route.byok)

    call = UpstreamCall(
        path=UPSTREAM_PATH,
        api_key=route.api_key,
        request_id=request_id,
        form_fields={**forwarded, "model": entry.upstream_name},
        file_field=(filename, upload.file, content_type),
    )
    upstream = await send_upstream(route, call, outcome=outcome, finish=finish, reservation=reservation)
    outcome.usage = transcription_usage(upstream.body, str(forwarded["response_format"]))
    outcome.delivered.append(upstream.body)
    headers = reservation.budget.headers()
    headers["content-type"] = upstream.headers.get("content-type") or "application/json"
    headers["x-writingmate-messages-counted"] = str(count_for(record()))
    return GatewayCall(result=Completion(status=200, body=upstream.body, headers=headers), finish=finish)
