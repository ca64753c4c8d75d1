# Envoy with the suite's rendered config (compose/envoy.yaml, from gateway/render.py)
# and the proto descriptor set its JSON transcoder reads.
# Build context: the repository root.

FROM python:3.11.11-slim-bookworm AS protos
RUN pip install --no-cache-dir grpcio-tools==1.81.1 googleapis-common-protos==1.76.0
COPY protos /protos
# google.rpc.Status and its details too: the transcoder needs them for JSON error bodies.
RUN python -m grpc_tools.protoc -I/protos -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      --include_imports --descriptor_set_out=/llmsuite.pb $(find /protos -name '*.proto') \
      google/rpc/status.proto google/rpc/error_details.proto

FROM envoyproxy/envoy:v1.40.0
COPY --from=protos /llmsuite.pb /etc/envoy/llmsuite.pb
COPY compose/envoy.yaml /etc/envoy/envoy.yaml
# The image's unprivileged envoy user.
USER 101:101
# Ready = Envoy's own readiness, via the admin interface on loopback.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q LIVE <&3"]
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"]
