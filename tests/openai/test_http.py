"""The HTTP layer in process (aiohttp's test server, no upstream call): routes, error
shape for aiohttp's own refusals, health, and the model list by scope."""

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.openai.app import build_app
from services.openai.config import OpenAISettings
from services.openai.handlers import Api


@pytest.fixture
async def client():
    settings = OpenAISettings(max_message_bytes=2048)
    api = Api(settings, router=None, retrieval=None)
    async with TestClient(TestServer(build_app(settings, api))) as test_client:
        test_client.api = api
        yield test_client


async def error_of(response) -> dict:
    assert response.content_type == "application/json"
    return (await response.json())["error"]


async def test_unknown_routes_and_methods_answer_in_openai_shape(client):
    missing = await client.get("/v1/completions")
    assert missing.status == 404 and (await error_of(missing))["code"] == "not_found"
    wrong = await client.get("/v1/chat/completions")
    assert wrong.status == 405 and (await error_of(wrong))["code"] == "method_not_allowed"


async def test_a_body_over_the_limit_is_413(client):
    response = await client.post("/v1/chat/completions", data=b"x" * 4096)
    assert response.status == 413
    error = await error_of(response)
    assert error["code"] == "request_too_large" and "2048" in error["message"]


async def test_health_is_503_until_ready(client):
    assert (await client.get("/healthz")).status == 503
    client.api.ready = True
    response = await client.get("/healthz")
    assert response.status == 200 and (await response.json())["status"] == "SERVING"


@pytest.mark.parametrize("scopes, listed", [
    ("inference", {"llmsuite/auto", "llmsuite/light", "llmsuite/full", "light", "full"}),
    ("retrieval:read", {"all-MiniLM-L6-v2"}),
    ("inference retrieval:read", {"llmsuite/auto", "llmsuite/light", "llmsuite/full", "light", "full",
                                  "all-MiniLM-L6-v2"}),
    ("admin", {"llmsuite/auto", "llmsuite/light", "llmsuite/full", "light", "full", "all-MiniLM-L6-v2"}),
    ("guardrails", set()),
])
async def test_models_lists_what_the_scopes_allow(client, scopes, listed):
    response = await client.get("/v1/models", headers={"x-llmsuite-scopes": scopes})
    body = await response.json()
    assert body["object"] == "list" and {model["id"] for model in body["data"]} == listed
    assert all(model["object"] == "model" and model["owned_by"] == "llmsuite" for model in body["data"])


async def test_one_model_by_id_with_its_slash(client):
    found = await client.get("/v1/models/llmsuite/light", headers={"x-llmsuite-scopes": "inference"})
    assert found.status == 200 and (await found.json())["id"] == "llmsuite/light"
    hidden = await client.get("/v1/models/all-MiniLM-L6-v2", headers={"x-llmsuite-scopes": "inference"})
    assert hidden.status == 404 and (await error_of(hidden))["code"] == "model_not_found"


async def test_bad_bodies_never_reach_an_upstream(client):
    response = await client.post("/v1/chat/completions", data=b"{not json")
    assert response.status == 400 and "not valid JSON" in (await error_of(response))["message"]
    unknown = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert unknown.status == 404 and (await error_of(unknown))["code"] == "model_not_found"
