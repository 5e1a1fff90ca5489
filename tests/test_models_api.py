"""/v1/models and /v1/models/{id}, through the official openai SDK against a live server."""

from __future__ import annotations

import openai
import pytest
import requests

from gateway.models import CatalogueModel
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def free_user():
    return make_user("free@example.com", plan="free")


def test_the_sdk_lists_the_models_the_plan_allows(live_server, free_user, settings):
    settings.DEMO_PROVIDER_ENABLED = False
    client = openai.OpenAI(base_url=live_server.api_base, api_key=free_user.key, max_retries=0)

    ids = {model.id for model in client.models.list()}

    basic = set(
        CatalogueModel.objects.filter(tier="basic", enabled=True)
        .exclude(provider="demo")
        .values_list("slug", flat=True)
    )
    assert ids == basic
    assert "openai/gpt-5-mini" in ids and "openai/gpt-5" not in ids


def test_the_list_has_openais_shape_and_budget_headers(live_server, free_user):
    from tests.openapi_schemas import errors

    response = requests.get(
        f"{live_server.v1_base}/models", headers={"Authorization": f"Bearer {free_user.key}"}, timeout=10
    )

    assert response.status_code == 200
    assert errors("ListModelsResponse", response.json()) == []
    assert response.headers["x-ratelimit-limit-messages"] == "25"
    assert response.headers["x-ratelimit-remaining-messages"] == "25"


def test_disabled_models_disappear(live_server, free_user):
    CatalogueModel.objects.filter(slug="google/gemini-2.5-flash").update(enabled=False)
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=free_user.key, max_retries=0)

    assert "google/gemini-2.5-flash" not in {m.id for m in client.models.list()}


def test_demo_models_are_listed_only_while_the_demo_provider_is_on(live_server, free_user, settings):
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=free_user.key, max_retries=0)
    settings.DEMO_PROVIDER_ENABLED = True
    assert "demo/echo" in {m.id for m in client.models.list()}

    settings.DEMO_PROVIDER_ENABLED = False
    from gateway.catalogue import forget_catalogue

    forget_catalogue()
    assert "demo/echo" not in {m.id for m in client.models.list()}


def test_the_sdk_retrieves_one_model_by_a_slug_with_a_slash(live_server, free_user):
    client = openai.OpenAI(base_url=live_server.api_base, api_key=free_user.key, max_retries=0)

    model = client.models.retrieve("openai/gpt-5-mini")

    assert (model.id, model.object, model.owned_by) == ("openai/gpt-5-mini", "model", "openai")


@pytest.mark.parametrize("path", ["openai/gpt-5-mini", "openai%2Fgpt-5-mini"])
def test_a_model_id_may_come_with_a_literal_or_encoded_slash(live_server, free_user, path):
    response = requests.get(
        f"{live_server.v1_base}/models/{path}", headers={"Authorization": f"Bearer {free_user.key}"}, timeout=10
    )

    assert response.status_code == 200
    assert response.json()["id"] == "openai/gpt-5-mini"


@pytest.mark.parametrize("slug", ["nobody/nothing", "openai/gpt-5"])
def test_unknown_or_not_allowed_models_are_404_model_not_found(live_server, free_user, slug):
    client = openai.OpenAI(base_url=live_server.api_base, api_key=free_user.key, max_retries=0)

    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve(slug)

    assert raised.value.code == "model_not_found"
    assert raised.value.body == {
        "message": f"The model '{slug}' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_unknown_routes_and_methods_get_json_errors(live_server, free_user):
    headers = {"Authorization": f"Bearer {free_user.key}"}
    missing = requests.get(f"{live_server.v1_base}/nothing-here", headers=headers, timeout=10)
    wrong_method = requests.delete(f"{live_server.v1_base}/models", headers=headers, timeout=10)

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "GET"
