"""Connection options shared by the CLI's subcommands."""

import argparse
import os

import grpc

from services.common.paths import REPO

DEFAULT_TARGET = "127.0.0.1:8080"
# Where `make run` keeps its development key (git-ignored, mode 0600).
DEV_KEY_FILE = REPO / "var" / "gateway" / "dev-key"


def _default_key() -> str:
    if os.environ.get("LLMSUITE_API_KEY"):
        return os.environ["LLMSUITE_API_KEY"]
    try:
        return DEV_KEY_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("LLMSUITE_TARGET", DEFAULT_TARGET),
                        help="Envoy address, host:port (env LLMSUITE_TARGET; default %(default)s)")
    parser.add_argument("--api-key", default=_default_key(),
                        help="API key (env LLMSUITE_API_KEY; default: the key `make run` created)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds (default %(default)s)")


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()


def channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(args.target)


def describe_error(err: grpc.RpcError) -> str:
    return f"error: {err.code().name}: {err.details()}"
