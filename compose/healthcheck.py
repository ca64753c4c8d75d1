"""Container health check: exit 0 only when the service on localhost:<port> says SERVING.

    python compose/healthcheck.py 50051           # gRPC health
    python compose/healthcheck.py --http 8090     # GET /healthz (the OpenAI API, an HTTP service)

With the workload's certificate in $LLMSUITE_TLS_CERT_FILE (compose), it calls over
mutual TLS, as the service itself (its certificate is valid for 127.0.0.1).
"""

import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str) -> grpc.Channel:
    if not os.environ.get("LLMSUITE_TLS_CERT_FILE"):
        return grpc.insecure_channel(target)
    files = [Path(os.environ[f"LLMSUITE_TLS_{name}_FILE"]).read_bytes() for name in ("CA", "KEY", "CERT")]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(*files))


def grpc_check(port: int) -> int:
    try:
        with channel(f"127.0.0.1:{port}") as channel_:
            reply = health_pb2_grpc.HealthStub(channel_).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError as err:
        print(f"health check on :{port} failed: {err.code().name}")
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"health on :{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


def http_check(port: int) -> int:
    context = None
    scheme = "http"
    if os.environ.get("LLMSUITE_TLS_CERT_FILE"):
        scheme = "https"
        context = ssl.create_default_context(cafile=os.environ["LLMSUITE_TLS_CA_FILE"])
        context.load_cert_chain(os.environ["LLMSUITE_TLS_CERT_FILE"], os.environ["LLMSUITE_TLS_KEY_FILE"])
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/healthz", timeout=2, context=context) as reply:
            print(f"health on :{port}: HTTP {reply.status}")
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as err:
        print(f"health check on :{port} failed: {err}")
        return 1


def main() -> int:
    if sys.argv[1] == "--http":
        return http_check(int(sys.argv[2]))
    return grpc_check(int(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
