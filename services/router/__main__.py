from services.common.server import main
from services.router.config import RouterSettings
from services.router.app import create

main("router", RouterSettings, create)
