"""Tracing's settings and its off state: without an endpoint nothing of the SDK is created."""

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter
from opentelemetry.sdk import trace as sdk_trace

from gateway.render import EnvoyParams, Tracing, render
from services.common import tracing
from services.common.config import ConfigError, load
from services.triton.launcher import trace_arguments


def test_without_an_endpoint_no_provider_exporter_or_interceptor_is_created(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("created while tracing is off")

    monkeypatch.setattr(trace_exporter.OTLPSpanExporter, "__init__", refuse)
    monkeypatch.setattr(sdk_trace.TracerProvider, "__init__", refuse)
    assert tracing.configure("router", load(tracing.TracingSettings, tracing.SECTION, environ={})) is False
    assert not tracing.enabled()
    assert not isinstance(trace.get_tracer_provider(), sdk_trace.TracerProvider)
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    # Every stage gets the same no-op: nothing is allocated per request.
    with tracing.span("admit", {"a": 1}) as first, tracing.span("cache") as second:
        assert first is second is trace.INVALID_SPAN
        assert not first.is_recording()
    headers = {"x-request-id": "r1"}
    tracing.inject(headers)
    assert headers == {"x-request-id": "r1"}


def test_the_endpoint_comes_from_the_tracing_section_or_its_environment_variable(tmp_path):
    config = tmp_path / "llmsuite.yaml"
    config.write_text(yaml.safe_dump({"tracing": {"otlp_endpoint": "collector:4317", "sample_percent": 10}}))
    settings = load(tracing.TracingSettings, tracing.SECTION, environ={"LLMSUITE_CONFIG": str(config)})
    assert settings.enabled and settings.otlp_endpoint == "collector:4317" and settings.sample_percent == 10
    settings = load(tracing.TracingSettings, tracing.SECTION,
                    environ={"LLMSUITE_TRACING_OTLP_ENDPOINT": "127.0.0.1:4317"})
    assert settings.otlp_endpoint == "127.0.0.1:4317"


@pytest.mark.parametrize("setting, value, fragment", [
    ("OTLP_ENDPOINT", "http://127.0.0.1:4317", "host:port"),
    ("OTLP_ENDPOINT", "collector", "host:port"),
    ("OTLP_HTTP_URL", "127.0.0.1:4318/v1/traces", "http(s)://"),
    ("SAMPLE_PERCENT", "150", "less than or equal to 100"),
])
def test_bad_tracing_settings_fail_at_start_naming_the_setting(setting, value, fragment):
    with pytest.raises(ConfigError) as err:
        load(tracing.TracingSettings, tracing.SECTION, environ={f"LLMSUITE_TRACING_{setting}": value})
    assert f"tracing.{setting.lower()}" in str(err.value) and fragment in str(err.value)


def test_envoy_traces_only_when_a_collector_is_configured():
    plain = yaml.safe_load(render(EnvoyParams()))
    assert "otlp_collector" not in {cluster["name"] for cluster in plain["static_resources"]["clusters"]}
    assert "tracing" not in _connection_manager(plain)

    traced = yaml.safe_load(render(EnvoyParams(tracing=Tracing("collector.example:4317", 25.0))))
    clusters = {cluster["name"]: cluster for cluster in traced["static_resources"]["clusters"]}
    address = clusters["otlp_collector"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "collector.example", "port_value": 4317}
    settings = _connection_manager(traced)["tracing"]
    assert settings["random_sampling"] == {"value": 25.0}
    provider = settings["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "otlp_collector"


def test_envoy_needs_the_collector_as_host_and_port():
    with pytest.raises(ValueError, match="host:port"):
        render(EnvoyParams(tracing=Tracing("collector.example")))


def test_triton_traces_only_propagated_requests_and_never_tensors():
    assert trace_arguments("") == []
    arguments = trace_arguments("http://127.0.0.1:4318/v1/traces")
    assert "--trace-config=mode=opentelemetry" in arguments
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces" in arguments
    assert "--trace-config=rate=0" in arguments and "--trace-config=level=TIMESTAMPS" in arguments
    assert not any("TENSORS" in argument for argument in arguments)


def _connection_manager(config: dict) -> dict:
    edge = next(listener for listener in config["static_resources"]["listeners"] if listener["name"] == "edge")
    filters = edge["filter_chains"][0]["filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.network.http_connection_manager")["typed_config"]
