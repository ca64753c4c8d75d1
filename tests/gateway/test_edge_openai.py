"""The OpenAI-compatible route through the real Envoy with edge security, in front of
the echo InferenceService (tests/gateway/upstream.py, which reports the identity it
received and fails on request): identity forwarding, errors before and after a
stream's first chunk, and Envoy's own answers on /v1/* in OpenAI's error shape."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

from gateway.keys import add_key
from gateway.render import EdgeSecurity, EnvoyParams
from tests.gateway.procs import placeholder_upstreams, start_envoy, start_gateway_service, start_upstream
from tests.harness import ServiceProcess, free_port, poll, service_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge-openai")
    keys_file = tmp / "keys.yaml"
    key = add_key(keys_file, "sdk", "acme", ["inference"])
    started = []
    try:
        authz, authz_port = start_gateway_service("authz", {"keys_file": keys_file}, tmp, "authz")
        limiter, limiter_port = start_gateway_service("ratelimit", {}, tmp, "ratelimit")
        upstream, upstream_port = start_upstream(tmp, "echo")
        started += [authz, limiter, upstream]
        openai_port = free_port()
        adapter = ServiceProcess("openai", [sys.executable, "-m", "services.openai"], tmp, env=service_env(
            "openai", {"port": openai_port, "metrics_port": free_port(), "router_url": f"127.0.0.1:{upstream_port}"}))
        started.append(adapter.start())
        adapter.wait_http_ok(f"http://127.0.0.1:{openai_port}/healthz", timeout=60)
        params = EnvoyParams(
            listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(), health_interval="0.5s",
            upstreams={**placeholder_upstreams(), "router": [f"127.0.0.1:{upstream_port}"],
                       "openai": [f"127.0.0.1:{openai_port}"]},
            security=EdgeSecurity(authz=[f"127.0.0.1:{authz_port}"], ratelimit=[f"127.0.0.1:{limiter_port}"]))
        started.append(start_envoy(params, tmp))
        yield {"base_url": f"http://127.0.0.1:{params.listen_port}/v1", "key": key, "adapter": adapter}
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def client(edge) -> openai.OpenAI:
    return openai.OpenAI(base_url=edge["base_url"], api_key=edge["key"], max_retries=0, timeout=30)


def ask(client: openai.OpenAI, prompt: str, **fields):
    return client.chat.completions.create(model="llmsuite/auto", messages=[{"role": "user", "content": prompt}],
                                          **fields)


def test_the_identity_authz_set_reaches_the_router_and_spoofed_headers_do_not(client):
    reply = ask(client, "who am I", extra_headers={"x-llmsuite-tenant": "globex", "x-llmsuite-scopes": "admin"})
    seen = json.loads(reply.choices[0].message.content)
    assert (seen["tenant"], seen["key_id"], seen["scopes"]) == ("acme", "sdk", "inference")
    assert seen["prompt"] == "who am I"


def test_a_failure_after_the_first_chunk_ends_the_stream_with_an_error_event(edge, client):
    stream = ask(client, "fail-after:2:UNAVAILABLE", stream=True)
    texts = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content)
    assert texts == ["", "part 0 ", "part 1 "]
    assert err.value.message == "the test upstream is unavailable"
    raw = subprocess.run(["curl", "-sS", "-N", f"{edge['base_url']}/chat/completions",
                          "-H", f"Authorization: Bearer {edge['key']}", "-d", json.dumps(
                              {"model": "llmsuite/auto", "stream": True,
                               "messages": [{"role": "user", "content": "fail-after:1:UNAVAILABLE"}]})],
                         capture_output=True, text=True, timeout=30)
    events = [line.removeprefix("data: ") for line in raw.stdout.splitlines() if line]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_before_any_text_is_an_http_error_with_retry_after(client, stream):
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "fail:RESOURCE_EXHAUSTED", stream=stream)
    assert limited.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.InternalServerError) as down:
        ask(client, "fail:UNAVAILABLE", stream=stream)
    assert down.value.status_code == 503 and down.value.response.headers["retry-after"] == "2"


def test_request_headers_over_the_limit_are_431_in_openai_shape(edge):
    request = urllib.request.Request(f"{edge['base_url']}/models", headers={
        "authorization": f"Bearer {edge['key']}", "x-padding": "p" * 40_000})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 431
    error = json.loads(err.value.read())["error"]
    assert error["code"] == "request_headers_too_large" and "request headers too large" in error["message"]


def test_with_the_api_down_envoy_answers_503_in_openai_shape(edge, client):
    """Last in this module: it stops the OpenAI API process."""
    edge["adapter"].stop()

    def refused():
        try:
            ask(client, "anyone?")
        except openai.InternalServerError as err:
            return err
        return None
    err = poll(refused, "Envoy's 503 once the API is down", timeout=15)
    assert err.status_code == 503 and err.code == "service_unavailable" and err.type == "server_error"
    assert err.response.headers["content-type"] == "application/json"
