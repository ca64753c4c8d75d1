"""Envoy external authorization (envoy.service.auth.v3): API keys and JWT claims -> tenant, scopes."""
