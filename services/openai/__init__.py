"""OpenAI-compatible HTTP API (chat completions, models, embeddings) in front of the router's gRPC."""
