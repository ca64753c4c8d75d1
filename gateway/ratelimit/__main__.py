from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.app import build_service
from services.common.server import main

if __name__ == "__main__":
    main("ratelimit", RateLimitSettings, build_service)
