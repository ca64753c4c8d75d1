"""Mutual TLS between the suite's processes, for workloads given a certificate.

Each workload (container) holds one certificate signed by the suite's CA
(`python -m gateway.certs`). Its server accepts only callers presenting a certificate
from that CA, and, with `tls_allowed_clients`, only those whose certificate's
common name is listed; its clients present the same certificate and check their
upstream's against the CA. Without certificates everything is plaintext, as on the
loopback of `make run`.
"""

from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import ServerSettings


@dataclass(frozen=True)
class MutualTls:
    certificate: bytes
    private_key: bytes
    ca: bytes

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "MutualTls | None":
        if not settings.tls_cert_file:
            return None
        return cls(Path(settings.tls_cert_file).read_bytes(), Path(settings.tls_key_file).read_bytes(),
                   Path(settings.tls_ca_file).read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.private_key,
                                            certificate_chain=self.certificate)


def peer_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the caller's verified certificate; "" without one."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode() if names else ""
