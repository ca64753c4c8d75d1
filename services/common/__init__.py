"""Shared runtime of every llmsuite service: bootstrap, config, errors, logs, metrics."""
