"""Container health check: exit 0 only when gRPC health on localhost:<port> says SERVING.

    python compose/healthcheck.py 50051
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = int(sys.argv[1])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError as err:
        print(f"health check on :{port} failed: {err.code().name}")
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"health on :{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
