from gateway.authz.config import AuthzSettings
from gateway.authz.app import build_service
from services.common.server import main

if __name__ == "__main__":
    main("authz", AuthzSettings, build_service)
