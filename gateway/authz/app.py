"""Wires the authz service for the shared bootstrap."""

from envoy.service.auth.v3 import external_auth_pb2_grpc

from gateway.authz.config import AuthzSettings
from gateway.authz.keystore import KeyStore
from gateway.authz.service import SERVICE_NAME, AuthorizationServicer
from gateway.keys import KeysFileError
from services.common.config import ConfigError
from services.common.server import Service


def build_service(settings: AuthzSettings) -> Service:
    store = KeyStore(settings.keys_file, settings.reload_interval_s, settings.redis_url, settings.revocation_set)
    try:
        store.load_file()
    except KeysFileError as err:
        raise ConfigError(str(err)) from None

    return Service(
        name="authz",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda server: external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(settings, store), server),
        warm_up=store.start,
        close=store.close,
    )
