"""/v1/audio/transcriptions through the official SDK against a live server, with a WAV made here."""

from __future__ import annotations

import io
import json
import wave

import openai
import pytest
import requests

from accounts.access import bump_access_epoch
from accounts.encryption import encrypt_secret
from accounts.models import OpenRouterKey
from billing.models import UsageEvent
from gateway.surfaces.openai.audio import sniff_audio_format, transcription_usage
from tests.fake_upstream import DEFAULT_TRANSCRIPT, FakeUpstream
from tests.openapi_schemas import assert_conforms
from tests.support import make_user, wait_for_usage_events

MODEL = "openai/whisper-1"
FORMATS = ["json", "text", "srt", "vtt", "verbose_json"]
# The live server reads the database from its own thread, so these tests commit; the seed comes back after.
live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def make_wav(seconds: float = 2.0, rate: int = 8000) -> bytes:
    """Mono 16-bit silence: a real WAV any decoder accepts, made in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


@pytest.fixture
def client(live_server, fake_upstream, caller):
    return openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)


def ledger(caller, count: int) -> list[UsageEvent]:
    """This test's ledger lines once `count` are there: they are written just after the response is sent."""
    return wait_for_usage_events(count, workspace_id=caller.workspace.pk)


def _post(live_server, caller, *, files=None, data=None, **kwargs) -> requests.Response:
    return requests.post(
        f"{live_server.api_base}/audio/transcriptions",
        files=files,
        data=data,
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=20,
        **kwargs,
    )


# ---- pure pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (make_wav(0.01)[:12], "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x1a\x45\xdf\xa3\x9f\x42", "webm"),
        (b"\x00\x00\x00\x20ftypM4A ", "mp4"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x00", "mp3"),
        (b"hello world!", None),
        (b"%PDF-1.7", None),
    ],
)
def test_audio_formats_are_recognised_by_their_first_bytes(head: bytes, expected: str | None) -> None:
    assert sniff_audio_format(head) == expected


def test_token_usage_maps_to_prompt_and_completion_and_anything_else_to_zero() -> None:
    tokens = {"type": "tokens", "input_tokens": 40, "output_tokens": 9, "total_tokens": 49}
    assert transcription_usage(json.dumps({"text": "x", "usage": tokens}).encode(), "json") == {
        "prompt_tokens": 40,
        "completion_tokens": 9,
        "total_tokens": 49,
    }
    duration = {"type": "duration", "seconds": 3}
    assert (
        transcription_usage(json.dumps({"text": "x", "usage": duration}).encode(), "verbose_json")["prompt_tokens"] == 0
    )
    assert transcription_usage(b"plain text\n", "text")["completion_tokens"] == 0


# ---- through the SDK ----------------------------------------------------------------------------


@live
def test_every_response_format_is_relayed_and_billed(client, fake_upstream, caller):
    wav = make_wav()
    for index, response_format in enumerate(FORMATS):
        extra = {"timestamp_granularities": ["word", "segment"]} if response_format == "verbose_json" else {}
        raw = client.audio.transcriptions.with_raw_response.create(
            model=MODEL, file=("speech.wav", wav, "audio/wav"), response_format=response_format, language="en", **extra
        )
        result = raw.parse()

        body = raw.http_response.text
        if response_format == "json":
            assert result.text == DEFAULT_TRANSCRIPT
            assert_conforms("CreateTranscriptionResponseJson", json.loads(body))
        elif response_format == "verbose_json":
            assert result.text == DEFAULT_TRANSCRIPT and result.segments[0].text == DEFAULT_TRANSCRIPT
            assert_conforms("CreateTranscriptionResponseVerboseJson", json.loads(body))
        else:
            assert isinstance(result, str) and DEFAULT_TRANSCRIPT in result, response_format
            assert raw.http_response.headers["content-type"].startswith(("text/plain", "text/vtt"))
        sent = fake_upstream.last_request
        assert sent.headers["authorization"] == "Bearer sk-transcribe-key"
        assert sent.form["model"] == "whisper-1"
        assert sent.form["response_format"] == response_format
        assert sent.form["language"] == "en"
        if extra:
            assert sent.form["timestamp_granularities[]"] == ["word", "segment"]
        assert sent.form["file"] == {"filename": "speech.wav", "content_type": "audio/wav", "size": len(wav)}
        event = ledger(caller, index + 1)[-1]
        assert event.endpoint == "audio.transcriptions" and event.status == "succeeded"
        assert event.counted_messages == 1
        if response_format == "json":
            assert (event.prompt_tokens, event.completion_tokens) == (40, len(DEFAULT_TRANSCRIPT.split()) * 2)
        else:
            assert (event.prompt_tokens, event.completion_tokens) == (0, 0), response_format


@live
def test_the_demo_model_transcribes_offline_and_deterministically(live_server, caller, settings):
    settings.DEMO_PROVIDER_ENABLED = True
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)
    wav = make_wav(seconds=3.0)
    for response_format in FORMATS:
        first, second = (
            client.audio.transcriptions.create(
                model="demo/transcribe", file=("a.wav", wav), response_format=response_format
            )
            for _ in range(2)
        )

        text = first if isinstance(first, str) else first.text
        assert "Demo transcript of a 3-second audio file." in text
        assert (first if isinstance(first, str) else first.model_dump()) == (
            second if isinstance(second, str) else second.model_dump()
        )
        if response_format == "json":
            assert first.usage.type == "tokens" and first.usage.output_tokens > 0
        if response_format == "verbose_json":
            assert first.duration == 3.0 and first.segments[0].end == 3.0
        if response_format == "srt":
            assert "00:00:00,000 --> 00:00:03,000" in first
        if response_format == "vtt":
            assert first.startswith("WEBVTT") and "00:00:00.000 --> 00:00:03.000" in first
    events = ledger(caller, 2 * len(FORMATS))
    assert all(e.counted_messages == 1 and e.model == "demo/transcribe" for e in events)


@live
def test_byok_users_are_transcribed_with_the_servers_key_and_counted_against_the_plan(client, fake_upstream, caller):
    OpenRouterKey.objects.create(user=caller.user, encrypted_key=encrypt_secret("sk-or-users-own"), last4="-own")
    bump_access_epoch()

    client.audio.transcriptions.create(model=MODEL, file=("speech.wav", make_wav()))

    assert fake_upstream.last_request.headers["authorization"] == "Bearer sk-transcribe-key"
    [event] = ledger(caller, 1)
    assert event.byok is False and event.counted_messages == 1


@live
def test_a_file_on_disk_is_streamed_upstream_whole(client, fake_upstream, caller, settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    wav = make_wav(seconds=200)  # 3.2 MB: over Django's in-memory limit, so it is spooled to disk

    result = client.audio.transcriptions.create(model=MODEL, file=("long.wav", wav, "audio/wav"))

    assert result.text == DEFAULT_TRANSCRIPT
    [sent] = fake_upstream.requests_to("/audio/transcriptions")
    assert sent.form["file"]["size"] == len(wav)
    ledger(caller, 1)
    assert list(tmp_path.iterdir()) == []  # the spooled upload is closed, which deletes it


@live
def test_an_upstream_failure_is_a_502_and_counts_nothing(client, fake_upstream, caller):
    fake_upstream.fail_next("500", times=2, endpoint="/audio/transcriptions")

    with pytest.raises(openai.InternalServerError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("speech.wav", make_wav()))

    assert raised.value.status_code == 502
    assert len(fake_upstream.requests_to("/audio/transcriptions")) == 1  # the upload is never sent twice
    [event] = ledger(caller, 1)
    assert event.status == "failed" and event.counted_messages == 0


@live
def test_without_a_transcription_key_the_server_says_so(client, fake_upstream, settings):
    settings.TRANSCRIPTION_API_KEY = ""

    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("speech.wav", make_wav()))

    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "upstream_not_configured"


# ---- refusals, all before the upstream ----------------------------------------------------------


def _refused(raised: pytest.ExceptionInfo, status: int, param: str | None, code: str, fake: FakeUpstream) -> None:
    assert raised.value.status_code == status
    assert raised.value.body["param"] == param and raised.value.body["code"] == code
    assert_conforms("Error", raised.value.body)
    assert fake.requests == []


@live
def test_a_file_over_the_limit_is_a_413(client, fake_upstream, settings):
    settings.API_MAX_AUDIO_BYTES = 50_000

    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("speech.wav", make_wav(seconds=4)))  # 64 kB

    _refused(raised, 413, "file", "file_too_large", fake_upstream)


@live
def test_a_body_over_the_handlers_cap_is_a_413_before_it_is_read(client, fake_upstream, settings):
    settings.API_MAX_AUDIO_BYTES = 50_000  # the handler allows 1 MiB more for the multipart overhead

    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("speech.wav", make_wav(seconds=80)))  # 1.28 MB

    _refused(raised, 413, None, "request_too_large", fake_upstream)


@live
@pytest.mark.slow
def test_the_real_25_mb_limit(client, fake_upstream):
    audio = make_wav(seconds=0.1) + b"\x00" * (25 * 1024 * 1024)

    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("big.wav", audio))

    _refused(raised, 413, "file", "file_too_large", fake_upstream)


@live
def test_empty_and_unsupported_files_are_400s(client, fake_upstream):
    cases = [
        (("empty.wav", b"", "audio/wav"), "empty_file"),
        (("notes.txt", b"hello, this is text", "text/plain"), "invalid_file_format"),
        (("speech.aac", make_wav(0.1), "audio/aac"), "invalid_file_format"),
        (("speech.wav", b"this is not audio at all", "audio/wav"), "invalid_file_format"),
    ]
    for file, code in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.audio.transcriptions.create(model=MODEL, file=file)

        _refused(raised, 400, "file", code, fake_upstream)


@live
def test_a_file_without_an_extension_is_named_after_its_content(client, fake_upstream, caller):
    client.audio.transcriptions.create(model=MODEL, file=("recording", make_wav(), "application/octet-stream"))

    assert fake_upstream.last_request.form["file"]["filename"] == "recording.wav"
    ledger(caller, 1)


@live
def test_bad_fields_and_a_missing_file_are_refused(live_server, fake_upstream, caller):
    cases = [
        ({"model": "openai/gpt-5-mini"}, 404, "model"),
        ({"model": "no/such-model"}, 404, "model"),
        ({}, 400, "model"),
        ({"model": MODEL, "response_format": "diarized_json"}, 400, "response_format"),
        ({"model": MODEL, "temperature": "3"}, 400, "temperature"),
        ({"model": MODEL, "stream": "true"}, 400, "stream"),
    ]
    for fields, status, param in cases:
        response = _post(live_server, caller, files={"file": ("speech.wav", make_wav(0.5), "audio/wav")}, data=fields)

        assert response.status_code == status, (fields, response.text)
        assert response.json()["error"]["param"] == param
    missing = _post(live_server, caller, files={"other": ("x.txt", b"x")}, data={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert fake_upstream.requests == []


@live
def test_a_body_that_is_not_multipart_is_a_415(live_server, fake_upstream, caller):
    as_json = _post(live_server, caller, json={"model": MODEL, "file": "aGVsbG8="})
    as_form = _post(live_server, caller, data={"model": MODEL})

    assert as_json.status_code == as_form.status_code == 415
    assert as_json.json()["error"]["code"] == "unsupported_media_type"
    assert fake_upstream.requests == []


@live
def test_a_broken_multipart_body_is_a_400(live_server, fake_upstream, caller):
    response = requests.post(
        f"{live_server.api_base}/audio/transcriptions",
        data=b'--nope\r\nContent-Disposition: form-data; name="model"\r\n\r\nx',
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "multipart/form-data"},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_multipart"
