"""Connection options shared by the CLI's subcommands."""

import argparse
import os

import grpc

DEFAULT_TARGET = "127.0.0.1:8080"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=os.environ.get("LLMSUITE_TARGET", DEFAULT_TARGET),
                        help="Envoy address, host:port (env LLMSUITE_TARGET; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("LLMSUITE_API_KEY", ""),
                        help="API key sent as x-api-key (env LLMSUITE_API_KEY)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds (default %(default)s)")


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", args.api_key),) if args.api_key else ()


def channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(args.target)


def describe_error(err: grpc.RpcError) -> str:
    return f"error: {err.code().name}: {err.details()}"
