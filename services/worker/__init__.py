"""Batch-job workers: drain the Redis job queue through the router (`python -m services.worker`)."""
