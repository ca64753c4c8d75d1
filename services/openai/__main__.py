"""`python -m services.openai`: the OpenAI-compatible HTTP API behind Envoy's /v1/* route."""
from services.openai.app import main

if __name__ == "__main__":
    main()
