"""Container health check: exit 0 only when gRPC health on localhost:<port> says SERVING.

    python compose/healthcheck.py 50051

With the workload's certificate in $LLMSUITE_TLS_CERT_FILE (compose), it calls over
mutual TLS, as the service itself (its certificate is valid for 127.0.0.1).
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str) -> grpc.Channel:
    if not os.environ.get("LLMSUITE_TLS_CERT_FILE"):
        return grpc.insecure_channel(target)
    files = [Path(os.environ[f"LLMSUITE_TLS_{name}_FILE"]).read_bytes() for name in ("CA", "KEY", "CERT")]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(*files))


def main() -> int:
    port = int(sys.argv[1])
    try:
        with channel(f"127.0.0.1:{port}") as channel_:
            reply = health_pb2_grpc.HealthStub(channel_).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError as err:
        print(f"health check on :{port} failed: {err.code().name}")
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"health on :{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
