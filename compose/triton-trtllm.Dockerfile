# Triton with the TensorRT-LLM backend, for NVIDIA GPUs. The model repository
# (rendered by `python -m services.triton.gpu_repository`), the engines and the
# tokenizers are mounted at /repository, /engines and /models: they are built for
# one GPU type and too large for an image layer. See docs/gpu.md.
FROM nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3
USER 1000:1000
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
CMD ["tritonserver", "--model-repository=/repository", "--strict-readiness=true", \
     "--grpc-keepalive-permit-without-calls=true", "--grpc-http2-min-recv-ping-interval-without-data=10000", \
     "--grpc-http2-max-pings-without-data=0", "--exit-timeout-secs=30"]
