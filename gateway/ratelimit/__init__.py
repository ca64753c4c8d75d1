"""Envoy global rate limiting (envoy.service.ratelimit.v3): per key, tenant and client IP, exact across replicas."""
