"""`python -m services.triton`: exec Triton on the configured model repository.

The process becomes tritonserver (os.execve), so SIGTERM from a supervisor or test
harness reaches Triton itself and it drains in-flight requests before exiting.
"""

import os
import sys
from pathlib import Path

from services.common.config import ConfigError, load
from services.common.tracing import SECTION as TRACING, TracingSettings
from services.triton.config import TritonSettings
from services.triton.launcher import triton_command


def main() -> None:
    try:
        settings = load(TritonSettings, "triton")
        tracing = load(TracingSettings, TRACING)
    except ConfigError as err:
        print(f"triton: {err}", file=sys.stderr)
        sys.exit(2)
    repository = Path(settings.model_repository)
    if not repository.is_dir():
        print(f"triton: model_repository {repository} is not a directory", file=sys.stderr)
        sys.exit(2)
    argv, env = triton_command(repository, settings.grpc_port, settings.http_port, settings.metrics_port,
                               host=settings.host, exit_timeout_s=settings.exit_timeout_s,
                               log_verbose=settings.log_verbose,
                               otlp_http_url=tracing.otlp_http_url if tracing.enabled else "")
    print(f"triton: exec {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execve(argv[0], argv, {**os.environ, **env})


main()
