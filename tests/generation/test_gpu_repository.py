"""The TensorRT-LLM templates render to valid Triton configs with the stand-ins' interface.

The GPU repository cannot run here (no GPU); these checks catch what can be caught
without one: syntax, wiring between the ensemble steps, and the interface contract.
"""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.triton.gpu_repository import load_models, render
from services.common.paths import REPO
from tests.stack_fixtures import CPU_MODEL_REPOSITORY

EXAMPLE = REPO / "models" / "gpu" / "models.example.yaml"


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def interface(config: model_config_pb2.ModelConfig) -> set[tuple]:
    return ({("in", t.name, t.data_type, tuple(t.dims), t.optional) for t in config.input}
            | {("out", t.name, t.data_type, tuple(t.dims)) for t in config.output})


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-repository")
    render(load_models(EXAMPLE), out)
    return out


def test_every_template_renders_to_a_valid_config(repository):
    configs = sorted(repository.glob("*/config.pbtxt"))
    assert len(configs) == 8
    for path in configs:
        text = path.read_text()
        assert "{{" not in text and "${" not in text, path
        assert parse(path).name == path.parent.name


@pytest.mark.parametrize("model", ["light", "full"])
def test_ensemble_has_the_cpu_standin_interface(repository, model):
    gpu = parse(repository / model / "config.pbtxt")
    cpu = parse(CPU_MODEL_REPOSITORY / "repository" / model / "config.pbtxt")
    assert interface(gpu) == interface(cpu)
    assert gpu.max_batch_size > 0 and cpu.max_batch_size > 0


@pytest.mark.parametrize("model", ["light", "full"])
def test_ensemble_steps_are_wired_to_existing_tensors(repository, model):
    ensemble = parse(repository / model / "config.pbtxt")
    produced = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        composing = parse(repository / step.model_name / "config.pbtxt")
        inputs = {t.name for t in composing.input}
        outputs = {t.name for t in composing.output}
        assert set(step.input_map) <= inputs, step.model_name
        assert set(step.input_map.values()) <= produced, f"{step.model_name} reads a tensor no step produced"
        assert set(step.output_map) <= outputs, step.model_name
        produced |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= produced


def test_engine_settings_reach_the_tensorrt_llm_config(repository):
    params = parse(repository / "full_tensorrt_llm" / "config.pbtxt").parameters
    assert params["gpt_model_type"].string_value == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"].string_value == "0.5"
    assert params["decoding_mode"].string_value == "eagle"
    assert params["eagle_choices"].string_value
    assert parse(repository / "full_tensorrt_llm" / "config.pbtxt").model_transaction_policy.decoupled


def test_bad_model_settings_are_rejected(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  light:\n    engine_dir: /e\n    tokenizer_dir: /t\n    kv_cache_free_gpu_mem_fraction: 1.5\n")
    with pytest.raises(ValueError, match="light"):
        load_models(config)
    config.write_text("models:\n  light:\n    engine_dir: /e\n    tokenizer_dir: /t\n    decoding_mode: lookahead\n")
    with pytest.raises(ValueError, match="lookahead"):
        load_models(config)
