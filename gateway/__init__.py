"""The edge: Envoy configuration, the authz and rate-limit services, API keys."""
