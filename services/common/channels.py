"""Client channels from one suite service to another."""

import grpc

CHANNEL_OPTIONS = [
    # Ping idle connections so a dead peer (killed pod, dropped NAT entry) is
    # noticed in seconds instead of at the next call's deadline.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after an upstream restarts: gRPC's default backoff grows to
    # two minutes, far longer than a restart takes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A channel to an in-cluster upstream (plaintext; the mesh or Envoy adds TLS)."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
