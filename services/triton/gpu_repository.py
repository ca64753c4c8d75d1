"""Renders the TensorRT-LLM model repository for GPU hosts from models/gpu.

    python -m services.triton.gpu_repository models/gpu/models.example.yaml OUT_DIR \\
        [--backend-models tensorrtllm_backend/all_models/inflight_batcher_llm]

For every model in the YAML it writes `<name>` (the ensemble with the suite's
interface), `<name>_preprocessing`, `<name>_tensorrt_llm` and `<name>_postprocessing`.
The tokeniser models' model.py files belong to the tensorrtllm_backend release
that built the engines; --backend-models copies them from that release's
all_models/inflight_batcher_llm folder. Nothing here needs a GPU; running the
result does (docs/gpu.md).
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.paths import REPO

TEMPLATES = REPO / "models" / "gpu" / "templates"
# Template -> folder suffix of the model it renders.
MODELS = {"ensemble": "", "preprocessing": "_preprocessing", "tensorrt_llm": "_tensorrt_llm",
          "postprocessing": "_postprocessing"}
# Models whose model.py comes from the tensorrtllm_backend release.
PYTHON_MODELS = ("preprocessing", "postprocessing")


class Lookahead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window_size: int = Field(ge=1)
    ngram_size: int = Field(ge=1)
    verification_set_size: int = Field(ge=1)


class GpuModel(BaseModel):
    """One TensorRT-LLM model; see the comments in tensorrt_llm.pbtxt.j2."""

    model_config = ConfigDict(extra="forbid")

    engine_dir: str = Field(min_length=1)
    tokenizer_dir: str = Field(min_length=1)
    triton_backend: str = Field("tensorrtllm", pattern="^(tensorrtllm|python)$")
    triton_max_batch_size: int = Field(64, ge=1)
    max_queue_delay_microseconds: int = Field(0, ge=0)
    batch_scheduler_policy: str = Field("max_utilization", pattern="^(max_utilization|guaranteed_no_evict)$")
    kv_cache_free_gpu_mem_fraction: float = Field(0.9, gt=0, le=1)
    enable_kv_cache_reuse: bool = True
    enable_chunked_context: bool = True
    decoding_mode: str = Field(
        "top_k_top_p", pattern="^(top_k|top_p|top_k_top_p|medusa|eagle|lookahead|redrafter|explicit_draft_tokens)$")
    medusa_choices: str = ""
    eagle_choices: str = ""
    lookahead: Lookahead | None = None
    add_special_tokens: bool = False
    tokenizer_instances: int = Field(4, ge=1)


def load_models(path: Path) -> dict[str, GpuModel]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    defaults: dict[str, Any] = data.get("defaults") or {}
    models = data.get("models") or {}
    if not models:
        raise ValueError(f"{path}: no models")
    result = {}
    for name, values in models.items():
        try:
            result[name] = GpuModel.model_validate({**defaults, **(values or {})})
        except ValidationError as err:
            raise ValueError(f"{path}: model {name}: {err}") from None
        if result[name].decoding_mode == "lookahead" and result[name].lookahead is None:
            raise ValueError(f"{path}: model {name}: decoding_mode lookahead needs a lookahead section")
    return result


def render(models: dict[str, GpuModel], out: Path, backend_models: Path | None = None) -> list[Path]:
    """Writes the repository under `out`; returns the model folders written."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True)
    written = []
    for name, model in models.items():
        for template, suffix in MODELS.items():
            folder = Path(out) / f"{name}{suffix}"
            (folder / "1").mkdir(parents=True, exist_ok=True)
            text = environment.get_template(f"{template}.pbtxt.j2").render(name=name, **model.model_dump())
            (folder / "config.pbtxt").write_text(text, encoding="utf-8")
            if backend_models is not None and template in PYTHON_MODELS:
                shutil.copy2(Path(backend_models) / template / "1" / "model.py", folder / "1" / "model.py")
            written.append(folder)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="models YAML, e.g. models/gpu/models.example.yaml")
    parser.add_argument("out", type=Path, help="folder to write the model repository to")
    parser.add_argument("--backend-models", type=Path,
                        help="tensorrtllm_backend's all_models/inflight_batcher_llm (for the tokeniser model.py files)")
    args = parser.parse_args(argv)
    try:
        folders = render(load_models(args.config), args.out, args.backend_models)
    except (ValueError, OSError, jinja2.TemplateError) as err:
        print(f"gpu_repository: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(folders)} models to {args.out}")
    if args.backend_models is None:
        print("note: without --backend-models the tokeniser models have no model.py yet (docs/gpu.md)")


if __name__ == "__main__":
    main()
