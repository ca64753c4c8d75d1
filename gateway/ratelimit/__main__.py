from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.service import build
from services.common.server import main

if __name__ == "__main__":
    main("ratelimit", RateLimitSettings, build)
