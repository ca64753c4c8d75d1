"""`llmsuite generate`: send a prompt through the edge and stream the answer."""

import argparse
import sys

import grpc
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.cli.common import add_connection_args, call_metadata, channel, describe_error

TIERS = {"auto": inference_pb2.TIER_UNSPECIFIED, "light": inference_pb2.TIER_LIGHT, "full": inference_pb2.TIER_FULL}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="send a prompt and stream the answer")
    parser.add_argument("prompt", help="the prompt; '-' reads it from standard input")
    parser.add_argument("--model", default="", help="pin a model alias or name")
    parser.add_argument("--tier", choices=sorted(TIERS), default="auto", help="pin a tier (default: router decides)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--session", default=None, help="continue this conversation")
    parser.add_argument("--collection", default="", help="retrieve context from this collection (RAG)")
    add_connection_args(parser)
    parser.set_defaults(run=run)


def _request(args: argparse.Namespace) -> inference_pb2.GenerateStreamRequest:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    request = inference_pb2.GenerateStreamRequest(prompt=prompt, model=args.model, tier=TIERS[args.tier])
    if args.max_tokens is not None:
        request.sampling.max_tokens = args.max_tokens
    if args.temperature is not None:
        request.sampling.temperature = args.temperature
    if args.session:
        request.session_id = args.session
    if args.collection:
        request.retrieval.collection = args.collection
    return request


def run(args: argparse.Namespace) -> int:
    with channel(args) as chan:
        stub = inference_pb2_grpc.InferenceServiceStub(chan)
        try:
            for message in stub.GenerateStream(_request(args), timeout=args.timeout, metadata=call_metadata(args)):
                if message.HasField("final"):
                    final = message.final
                    usage = final.usage
                    print(file=sys.stdout, flush=True)
                    print(f"[{inference_pb2.Tier.Name(final.tier)} {final.model}@{final.model_version} "
                          f"tokens in/out {usage.input_tokens}/{usage.output_tokens} cost ${final.cost_usd:.6f} "
                          f"cache {inference_pb2.CacheStatus.Name(final.cache_status)}"
                          f"{' degraded' if final.degraded else ''} request {final.request_id}]", file=sys.stderr)
                else:
                    print(message.text_delta, end="", flush=True)
        except grpc.RpcError as err:
            print(describe_error(err), file=sys.stderr)
            return 1
    return 0
