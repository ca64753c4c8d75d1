from gateway.authz.config import AuthzSettings
from gateway.authz.service import build
from services.common.server import main

if __name__ == "__main__":
    main("authz", AuthzSettings, build)
