"""Guardrails service: PII and secrets redaction, prompt-injection detection, output scanning."""
