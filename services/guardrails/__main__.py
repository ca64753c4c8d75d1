"""`python -m services.guardrails`: the guardrails gRPC service."""

from services.common.server import main
from services.guardrails.config import GuardrailsSettings
from services.guardrails.app import build_service

main("guardrails", GuardrailsSettings, build_service)
