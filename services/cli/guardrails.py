"""`llmsuite guardrails scan FILE.jsonl`: one JSON verdict per input line.

Reads JSON Lines with a text field (default `text`) and writes, per line, the
verdict, injection score, findings (entity, offsets, score, action) and reasons.
By default the checks run in this process with the guardrails settings
($LLMSUITE_CONFIG, section `guardrails`); `--remote` sends each line to a running
service's CheckInput instead (through Envoy by default, see --target).
"""

import argparse
import asyncio
import json
import sys
from typing import IO, Iterator

import grpc

from services.cli.common import add_connection_args, call_metadata, channel, describe_error

# Lines checked concurrently: enough for the embedder to batch, few enough to keep
# memory flat on large files.
_CONCURRENCY = 32


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("guardrails", help="guardrails tools")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    scan = commands.add_parser("scan", help="check every line of a JSON Lines file, one JSON verdict per line",
                               description=__doc__.split("\n\n")[1])
    scan.add_argument("file", help="JSON Lines input; '-' reads standard input")
    scan.add_argument("--field", default="text", help="field holding the text (default %(default)s)")
    scan.add_argument("--policy", default="", help="policy name (default: the tenant's policy)")
    scan.add_argument("--out", default="-", help="output file (default: standard output)")
    scan.add_argument("--sanitized", action="store_true", help="include the sanitised text in each verdict")
    scan.add_argument("--remote", action="store_true", help="call a running guardrails service instead of "
                                                            "checking in this process")
    add_connection_args(scan)
    scan.set_defaults(run=run)


def _lines(handle: IO[str], field: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, error) for each non-blank line."""
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, None, f"not JSON: {err.msg}"
            continue
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            yield number, None, f"no string field {field!r}"
        else:
            yield number, text, ""


def _record(number: int, verdict: str, score: float, findings: list[dict], reasons: list[str],
            sanitized: str | None) -> dict:
    record = {"line": number, "verdict": verdict, "injection_score": round(score, 4),
              "findings": findings, "reasons": reasons}
    if sanitized is not None:
        record["sanitized_text"] = sanitized
    return record


async def _scan_local(args: argparse.Namespace, source: IO[str], sink: IO[str]) -> int:
    from services.common.config import ConfigError, load
    from services.guardrails.config import GuardrailsSettings
    from services.guardrails.app import build_guard, load_classifier, load_embedder

    try:
        settings = load(GuardrailsSettings, "guardrails")
        classifier = load_classifier(settings)
        batching = load_embedder(settings, classifier)
        guard = build_guard(settings, batching.embed_one, classifier)
        policy = guard.resolve_policy(settings.default_tenant, args.policy)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # NotFound / PermissionDenied for --policy
        print(f"error: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2

    async def check(number: int, text: str | None, error: str) -> dict:
        if text is None:
            return {"line": number, "error": error}
        if len(text) > settings.max_text_chars:
            return {"line": number, "error": f"text longer than {settings.max_text_chars} characters"}
        outcome = await guard.check_input(text, policy, settings.default_tenant)
        findings = [{"entity": f.entity, "start": f.start, "end": f.end, "score": round(f.score, 4),
                     "action": f.action.value} for f in outcome.findings]
        return _record(number, outcome.verdict.value, outcome.injection_score, findings, outcome.reasons,
                       outcome.text if args.sanitized else None)

    failures = 0
    try:
        batch: list[tuple[int, str | None, str]] = []
        for item in _lines(source, args.field):
            batch.append(item)
            if len(batch) == _CONCURRENCY:
                failures += _write(sink, await asyncio.gather(*(check(*entry) for entry in batch)))
                batch = []
        failures += _write(sink, await asyncio.gather(*(check(*entry) for entry in batch)))
    finally:
        await batching.close()
    return 1 if failures else 0


def _write(sink: IO[str], records: list[dict]) -> int:
    for record in records:
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    sink.flush()
    return sum("error" in record for record in records)


def _scan_remote(args: argparse.Namespace, source: IO[str], sink: IO[str]) -> int:
    from llmsuite.guardrails.v1 import guardrails_pb2 as pb
    from llmsuite.guardrails.v1 import guardrails_pb2_grpc

    failures = 0
    with channel(args) as chan:
        stub = guardrails_pb2_grpc.GuardrailsServiceStub(chan)
        for number, text, error in _lines(source, args.field):
            if text is None:
                failures += _write(sink, [{"line": number, "error": error}])
                continue
            try:
                response = stub.CheckInput(pb.CheckInputRequest(text=text, policy=args.policy),
                                           timeout=args.timeout, metadata=call_metadata(args))
            except grpc.RpcError as err:
                failures += _write(sink, [{"line": number, "error": describe_error(err)}])
                continue
            findings = [{"entity": f.entity, "start": f.start, "end": f.end, "score": round(f.score, 4),
                         "action": pb.Action.Name(f.action).removeprefix("ACTION_").lower()}
                        for f in response.findings]
            verdict = pb.Verdict.Name(response.verdict).removeprefix("VERDICT_").lower()
            _write(sink, [_record(number, verdict, response.injection_score, findings, list(response.reasons),
                                  response.sanitized_text if args.sanitized else None)])
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as err:
        print(f"error: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    sink = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    try:
        if args.remote:
            return _scan_remote(args, source, sink)
        return asyncio.run(_scan_local(args, source, sink))
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
