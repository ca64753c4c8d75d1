"""Service-to-service trust with mutual TLS, as compose runs it: a service with a
certificate refuses plaintext callers, callers without a certificate, callers whose
certificate another CA signed, and suite certificates it does not list; Envoy, with
its certificate, gets through. The same for the OpenAI API's HTTP port, which calls
the router with its own certificate. Real processes: the echo InferenceService on the
suite's server runtime, the OpenAI API, Envoy, certificates from `python -m gateway.certs`."""

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from gateway.render import EnvoyParams, UpstreamTls
from services.common import channels
from services.common.tls import MutualTls
from tests.gateway.procs import placeholder_upstreams, start_envoy
from tests.harness import REPO, ServiceProcess, assert_grpc_error, free_port, service_env

# The echo upstream stands in for the router: its certificate is named so.
SERVICE = "router"

# Every test uses the suite fixture (Envoy, the echo service, the OpenAI API).
pytestmark = pytest.mark.integration


def credentials(folder: Path, with_certificate: bool = True) -> grpc.ChannelCredentials:
    ca = (folder / "ca.pem").read_bytes()
    if not with_certificate:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return MutualTls((folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes(), ca).channel_credentials()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtls")
    for out, names in ((tmp / "certs", "envoy,router,retrieval,openai"), (tmp / "elsewhere", "envoy")):
        made = subprocess.run([sys.executable, "-m", "gateway.certs", "--out", str(out), "--names", names],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    certs = tmp / "certs"
    own = certs / SERVICE
    config = tmp / "upstream.yaml"
    # Envoy, the OpenAI API, and the service itself for its own health check; the
    # OpenAI API takes Envoy and itself.
    config.write_text(yaml.safe_dump({"upstream": {"tls_allowed_clients": ["envoy", "openai", SERVICE]},
                                      "openai": {"tls_allowed_clients": ["envoy", "openai"]}}))
    port = free_port()
    env = {**service_env("upstream", {"port": port, "metrics_port": free_port(), "replica": "mtls"}),
           "LLMSUITE_CONFIG": str(config), "LLMSUITE_TLS_CERT_FILE": str(own / "cert.pem"),
           "LLMSUITE_TLS_KEY_FILE": str(own / "key.pem"), "LLMSUITE_TLS_CA_FILE": str(own / "ca.pem")}
    upstream = ServiceProcess("upstream-mtls", [sys.executable, "-m", "tests.gateway.upstream"], tmp, env=env)
    started = [upstream.start()]
    try:
        upstream.wait_grpc_healthy(port, timeout=60, credentials=credentials(own))
        openai_port = free_port()
        openai_certs = certs / "openai"
        openai = ServiceProcess("openai-mtls", [sys.executable, "-m", "services.openai"], tmp, env={
            **service_env("openai", {"port": openai_port, "metrics_port": free_port(),
                                     "router_url": f"127.0.0.1:{port}"}),
            "LLMSUITE_CONFIG": str(config), "LLMSUITE_TLS_CERT_FILE": str(openai_certs / "cert.pem"),
            "LLMSUITE_TLS_KEY_FILE": str(openai_certs / "key.pem"), "LLMSUITE_TLS_CA_FILE": str(openai_certs / "ca.pem")})
        started.append(openai.start())
        openai.wait_until(lambda: https_status(openai_port, openai_certs / "ca.pem", openai_certs) == 200,
                          "/healthz 200 over mutual TLS", 60)
        envoy_certs = certs / "envoy"
        params = EnvoyParams(
            listen_host="127.0.0.1", listen_port=free_port(), admin_port=free_port(), health_interval="0.5s",
            upstreams={**placeholder_upstreams(), "router": [f"127.0.0.1:{port}"],
                       "openai": [f"127.0.0.1:{openai_port}"]},
            upstream_tls=UpstreamTls(cert_file=str(envoy_certs / "cert.pem"), key_file=str(envoy_certs / "key.pem"),
                                     ca_file=str(envoy_certs / "ca.pem")))
        started.append(start_envoy(params, tmp))
        yield {"edge": f"127.0.0.1:{params.listen_port}", "port": port, "certs": certs,
               "elsewhere": tmp / "elsewhere", "openai_port": openai_port}
    finally:
        for process in reversed(started):
            process.stop()


def https_status(port: int, ca: Path, certificate: Path | None, path: str = "/healthz") -> int | None:
    """The HTTP status of GET `path` over TLS, checking the server against `ca` and
    presenting the certificate in the folder `certificate` (None: none); None when the
    handshake or the connection fails."""
    context = ssl.create_default_context(cafile=str(ca))
    if certificate is not None:
        context.load_cert_chain(str(certificate / "cert.pem"), str(certificate / "key.pem"))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=5, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def generate(channel: grpc.Channel) -> dict:
    reply = inference_pb2_grpc.InferenceServiceStub(channel).Generate(
        inference_pb2.GenerateRequest(prompt="who is there"), timeout=10)
    return json.loads(reply.text)


def direct(suite, creds: grpc.ChannelCredentials | None) -> grpc.Channel:
    target = f"127.0.0.1:{suite['port']}"
    if creds is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", SERVICE)])


def test_envoy_with_its_certificate_gets_through(suite):
    with grpc.insecure_channel(suite["edge"]) as channel:
        assert generate(channel)["prompt"] == "who is there"


@pytest.mark.parametrize("caller", ["plaintext", "no certificate", "another CA"])
def test_a_direct_call_without_a_suite_certificate_is_refused(suite, caller):
    creds = {"plaintext": None, "no certificate": credentials(suite["certs"] / "envoy", with_certificate=False),
             "another CA": credentials(suite["elsewhere"] / "envoy")}[caller]
    with direct(suite, creds) as channel:
        with pytest.raises(grpc.RpcError) as err:
            generate(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()


def test_a_suite_certificate_the_service_does_not_list_is_refused(suite):
    with direct(suite, credentials(suite["certs"] / "retrieval")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            generate(channel)
    assert_grpc_error(err.value, grpc.StatusCode.PERMISSION_DENIED, "'retrieval' may not call upstream")


async def test_the_services_own_clients_present_their_certificate(suite):
    """What the router does to reach its upstreams: channels.upstream_channel with the
    workload's certificate (set by the server bootstrap from its settings)."""
    own = suite["certs"] / SERVICE
    channels.use_tls(MutualTls((own / "cert.pem").read_bytes(), (own / "key.pem").read_bytes(),
                               (own / "ca.pem").read_bytes()))
    try:
        async with channels.upstream_channel(f"127.0.0.1:{suite['port']}") as channel:
            reply = await inference_pb2_grpc.InferenceServiceStub(channel).Generate(
                inference_pb2.GenerateRequest(prompt="from a service"), timeout=10)
        assert json.loads(reply.text)["prompt"] == "from a service"
    finally:
        channels.use_tls(None)


def test_the_openai_api_behind_envoy_reaches_the_router_over_mutual_tls(suite):
    request = urllib.request.Request(
        f"http://{suite['edge']}/v1/chat/completions", method="POST", headers={"content-type": "application/json"},
        data=json.dumps({"model": "llmsuite/auto", "messages": [{"role": "user", "content": "via envoy"}]}).encode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.loads(json.loads(reply.read())["choices"][0]["message"]["content"])
    assert answer["prompt"] == "via envoy" and answer["replica"] == "mtls"


def test_the_openai_api_refuses_callers_without_a_listed_certificate(suite):
    port, certs = suite["openai_port"], suite["certs"]
    ca = certs / "openai" / "ca.pem"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert https_status(port, ca, None) is None, "a TLS call without a certificate got through"
    assert https_status(port, ca, suite["elsewhere"] / "envoy") is None, "another CA's certificate got through"
    assert https_status(port, ca, certs / "retrieval", "/v1/models") == 403
    assert https_status(port, ca, certs / "envoy", "/v1/models") == 200
