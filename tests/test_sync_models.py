"""sync_models against the fake OpenRouter: adds new models disabled, updates names, never deletes."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command

from gateway.models import CatalogueModel
from gateway.sync import ModelSyncError, ModelSyncUnavailable, sync_models
from gateway.tasks import sync_models_task


def upstream_model(slug: str, name: str, context_length: int = 128000) -> dict:
    return {"id": slug, "name": name, "created": 1760000000, "context_length": context_length}


@pytest.fixture
def catalogue_before(db) -> dict[str, CatalogueModel]:
    return {row.slug: row for row in CatalogueModel.objects.all()}


def test_first_sync_updates_known_models_and_adds_new_ones_disabled(fake_upstream, catalogue_before: dict) -> None:
    fake_upstream.models.append(upstream_model("mistralai/brand-new", "Mistral: Brand New", 65536))

    result = sync_models()

    assert (result.seen, result.added) == (6, 1)
    mini = CatalogueModel.objects.get(slug="openai/gpt-5-mini")
    assert mini.display_name == "OpenAI: GPT-5 Mini"
    assert (mini.enabled, mini.tier) == (catalogue_before["openai/gpt-5-mini"].enabled, "basic")
    new = CatalogueModel.objects.get(slug="mistralai/brand-new")
    assert (new.enabled, new.tier, new.provider, new.kind) == (False, "premium", "openrouter", "chat")
    assert (new.display_name, new.context_length, new.owned_by) == ("Mistral: Brand New", 65536, "mistralai")
    assert int(new.created.timestamp()) == 1760000000
    # Demo and transcription rows are ours: untouched, and nothing is deleted.
    for slug, before in catalogue_before.items():
        after = CatalogueModel.objects.get(slug=slug)
        if before.provider != "openrouter":
            assert after.display_name == before.display_name
    assert CatalogueModel.objects.count() == len(catalogue_before) + 1


def test_second_sync_with_the_same_list_changes_nothing(fake_upstream, db) -> None:
    sync_models()
    before = list(CatalogueModel.objects.values())

    result = sync_models()

    assert (result.added, result.updated, result.unchanged) == (0, 0, 5)
    assert list(CatalogueModel.objects.values()) == before


def test_models_missing_upstream_are_kept_and_staff_choices_survive(fake_upstream, db) -> None:
    CatalogueModel.objects.filter(slug="openai/gpt-5").update(enabled=False, tier="ultra")
    fake_upstream.models = [m for m in fake_upstream.models if m["id"] != "google/gemini-2.5-pro"]
    fake_upstream.models[0]["context_length"] = 500000

    sync_models()

    assert CatalogueModel.objects.filter(slug="google/gemini-2.5-pro").exists()
    gpt5 = CatalogueModel.objects.get(slug="openai/gpt-5")
    assert (gpt5.enabled, gpt5.tier) == (False, "ultra")
    assert CatalogueModel.objects.get(slug=fake_upstream.models[0]["id"]).context_length == 500000


def test_a_row_is_matched_by_its_upstream_model_name(fake_upstream, db) -> None:
    CatalogueModel.objects.create(slug="writingmate/fast", display_name="Fast", upstream_model="openai/gpt-5-mini")

    sync_models()

    assert CatalogueModel.objects.get(slug="writingmate/fast").display_name == "OpenAI: GPT-5 Mini"


def test_malformed_entries_are_skipped(fake_upstream, db) -> None:
    fake_upstream.models = [
        upstream_model("ok/model", "OK"),
        {"name": "no id"},
        {"id": 42},
        "not an object",
        {"id": "x/" + "y" * 300, "name": "too long"},
        {"id": "ok/nameless", "context_length": "big"},
    ]

    result = sync_models()

    assert (result.added, result.skipped) == (2, 4)
    nameless = CatalogueModel.objects.get(slug="ok/nameless")
    assert (nameless.display_name, nameless.context_length) == ("ok/nameless", None)


def test_sends_the_server_key_only_when_set(fake_upstream, db, settings) -> None:
    sync_models()
    assert fake_upstream.requests_to("/models")[-1].headers.get("authorization") == "Bearer sk-or-server-key"

    settings.OPENROUTER_API_KEY = ""
    sync_models()
    assert "authorization" not in fake_upstream.requests_to("/models")[-1].headers


@pytest.mark.parametrize(("kind", "error"), [("503", ModelSyncUnavailable), ("429", ModelSyncUnavailable)])
def test_transient_failures_are_retryable(fake_upstream, db, kind: str, error: type) -> None:
    fake_upstream.fail_next(kind, endpoint="/models")
    with pytest.raises(error):
        sync_models()


def test_client_errors_are_not_retryable(fake_upstream, db) -> None:
    fake_upstream.fail_next("401", endpoint="/models")
    with pytest.raises(ModelSyncError) as raised:
        sync_models()
    assert not isinstance(raised.value, ModelSyncUnavailable)


def test_unreachable_upstream_is_retryable(db, settings) -> None:
    settings.OPENROUTER_BASE_URL = "http://127.0.0.1:9/api/v1"  # discard port: nothing listens
    with pytest.raises(ModelSyncUnavailable):
        sync_models()


@pytest.fixture
def redirecting_upstream() -> Iterator[tuple[str, list[str]]]:
    """A tiny server whose /models redirects elsewhere; records every path it serves."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere/models")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1", seen
    server.shutdown()
    server.server_close()


def test_redirects_are_not_followed(redirecting_upstream, db, settings) -> None:
    base_url, seen = redirecting_upstream
    settings.OPENROUTER_BASE_URL = base_url
    settings.OPENROUTER_API_KEY = "sk-or-server-key"

    with pytest.raises(ModelSyncError, match="302"):
        sync_models()
    assert seen == ["/api/v1/models"]


def test_command_prints_one_summary_line(fake_upstream, db) -> None:
    out = io.StringIO()
    call_command("sync_models", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Synced 5 models from ") and "0 added" in lines[0]

    fake_upstream.fail_next("500", endpoint="/models")
    with pytest.raises(CommandError, match="500"):
        call_command("sync_models", stdout=io.StringIO())


def test_task_runs_the_sync(fake_upstream, db) -> None:
    fake_upstream.models.append(upstream_model("new/model", "New"))

    summary = sync_models_task.apply().get()

    assert "1 added" in summary
    assert CatalogueModel.objects.get(slug="new/model").enabled is False
