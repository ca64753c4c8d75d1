# One image for every Python process of the suite (router, guardrails, retrieval,
# generation, authz, ratelimit, openai); the compose service picks the module to run.
# Build context: the repository root (see docker-compose.yml).
# Base images are pinned by exact version; pin by digest too in your registry
# mirror (`image@sha256:...`) if your policy asks for it.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.lock pyproject.toml ./
# torch first, from the CPU index: otherwise a dependency pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.lock
COPY protos ./protos
COPY services ./services
COPY gateway ./gateway
COPY compose/healthcheck.py ./compose/healthcheck.py
RUN pip install --no-deps . \
 && mkdir gen \
 && python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
      --include_imports --descriptor_set_out=gen/llmsuite.pb $(find protos -name '*.proto') \
 && echo /app/gen > /opt/venv/lib/python3.11/site-packages/llmsuite-gen.pth \
 && LLMSUITE_MODEL_CACHE=/app/models python -m services.embedding \
      services/guardrails/data/injection_adapter.npz services/guardrails/data/injection_adapter_fast.npz

FROM python:3.11.11-slim-bookworm
# Unprivileged, fixed uid so Kubernetes' runAsNonRoot can check it. The folders compose
# mounts volumes on belong to it, so a fresh volume does too and the one-shot
# keys-init and certs-init, and the router's audit log, can write there.
RUN groupadd --gid 10001 llmsuite && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin llmsuite \
 && mkdir -p /keys /certs/envoy /certs/router /certs/worker /certs/guardrails /certs/retrieval /certs/generation \
      /certs/authz /certs/ratelimit /certs/openai /var/lib/llmsuite/audit \
 && chown -R 10001:10001 /keys /certs /var/lib/llmsuite
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The embedder's ONNX files were exported at build time (read-only here).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp HEALTH_PORT=50051 \
    LLMSUITE_MODEL_CACHE=/app/models
WORKDIR /app
USER 10001:10001
# Each service sets HEALTH_PORT to its gRPC port; compose repeats it per service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["sh", "-c", "python /app/compose/healthcheck.py \"$HEALTH_PORT\""]
ENTRYPOINT ["python", "-m"]
CMD ["services.router"]
