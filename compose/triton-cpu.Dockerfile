# Triton 2.51 (the release nvidia-pytriton carries) with the CPU stand-in models
# (models/cpu): the same artifact for compose and Kubernetes' cpu overlay.
# Build context: the repository root.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY models/cpu /models
# The image's unprivileged user.
USER 1000:1000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
CMD ["tritonserver", "--model-repository=/models/repository", "--strict-readiness=true", \
     "--allow-gpu-metrics=false", "--grpc-keepalive-permit-without-calls=true", \
     "--grpc-http2-min-recv-ping-interval-without-data=10000", "--grpc-http2-max-pings-without-data=0", \
     "--exit-timeout-secs=10"]
