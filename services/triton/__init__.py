"""Runs the Triton Inference Server that nvidia-pytriton carries on a model repository."""
