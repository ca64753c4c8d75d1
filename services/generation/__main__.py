"""`python -m services.generation`: the generation service (section `generation`)."""

from services.common.server import main
from services.generation.app import build_service
from services.generation.config import GenerationSettings

main("generation", GenerationSettings, build_service)
