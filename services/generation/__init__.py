"""GenerationService: model registry and streaming generation on Triton."""
