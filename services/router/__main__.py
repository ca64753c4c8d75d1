"""`python -m services.router`: the router, the suite's InferenceService (section `router`)."""

from services.common.server import main
from services.router.app import build_service
from services.router.config import RouterSettings

main("router", RouterSettings, build_service)
