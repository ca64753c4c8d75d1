"""OpenAI's chat and embedding shapes to the suite's protos and back.

Pure functions: a validated request in, a GenerateRequest out; a router answer in,
OpenAI's JSON objects (and llmsuite's headers and extension object) out.
"""

import base64
import struct
from dataclasses import dataclass

from llmsuite.inference.v1 import inference_pb2
from llmsuite.retrieval.v1 import retrieval_pb2

from services.openai.config import TIER_MODELS
from services.openai.errors import bad_request
from services.openai.schema import ChatCompletionRequest

_ROLES = {"system": inference_pb2.ROLE_SYSTEM, "developer": inference_pb2.ROLE_SYSTEM,
          "user": inference_pb2.ROLE_USER, "assistant": inference_pb2.ROLE_ASSISTANT}
_TIERS = dict(zip(TIER_MODELS, (inference_pb2.TIER_UNSPECIFIED, inference_pb2.TIER_LIGHT, inference_pb2.TIER_FULL)))
_FINISH = {inference_pb2.FINISH_REASON_STOP: "stop", inference_pb2.FINISH_REASON_LENGTH: "length",
           inference_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter"}
_TIER_NAMES = {inference_pb2.TIER_CACHE: "cache", inference_pb2.TIER_LIGHT: "light",
               inference_pb2.TIER_FULL: "full"}
_CACHE_NAMES = {inference_pb2.CACHE_STATUS_MISS: "miss", inference_pb2.CACHE_STATUS_HIT_EXACT: "hit_exact",
                inference_pb2.CACHE_STATUS_HIT_SEMANTIC: "hit_semantic", inference_pb2.CACHE_STATUS_BYPASS: "bypass"}


def _text(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        raise bad_request(f"messages[{index}].content is missing", f"messages[{index}].content")
    parts = []
    for number, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                              f"messages[{index}].content[{number}]")
        parts.append(part["text"])
    return "\n".join(parts)


def router_request(chat: ChatCompletionRequest, message_class=inference_pb2.GenerateRequest):
    """The router request for a chat completion: a GenerateRequest, or with
    `message_class` a GenerateStreamRequest (the two have the same fields).

    System messages pass as ROLE_SYSTEM: the router applies the tenant's
    allow_client_system_prompt rule, as for native callers.
    """
    request = message_class(
        messages=[inference_pb2.Message(role=_ROLES[message.role], content=_text(message.content, index))
                  for index, message in enumerate(chat.messages)])
    if chat.model in _TIERS:
        request.tier = _TIERS[chat.model]
    else:
        request.model = chat.model
    sampling = request.sampling
    max_tokens = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if chat.temperature is not None:
        sampling.temperature = chat.temperature
    if chat.top_p is not None:
        sampling.top_p = chat.top_p
    if chat.seed is not None:
        sampling.seed = chat.seed
    if chat.stop is not None:
        sampling.stop.extend([chat.stop] if isinstance(chat.stop, str) else chat.stop)
    # The router keeps an end user on one model variant during a canary or A/B
    # rollout (and audits only an HMAC of it); without it the key id decides.
    if chat.user:
        request.user = chat.user
    return request


@dataclass(frozen=True)
class Completion:
    """What every response of one chat completion shares."""

    id: str
    created: int
    # The model id the caller asked for (a tier name or a model); llmsuite.model
    # names the one that answered.
    model: str


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage(reply: inference_pb2.GenerateResponse) -> dict:
    return {"prompt_tokens": reply.usage.input_tokens, "completion_tokens": reply.usage.output_tokens,
            "total_tokens": reply.usage.total_tokens}


def finish_reason(reply: inference_pb2.GenerateResponse) -> str:
    return _FINISH.get(reply.finish_reason, "stop")


def extension(reply: inference_pb2.GenerateResponse) -> dict:
    """llmsuite's own fields, as the `llmsuite` object of a response."""
    return {
        "request_id": reply.request_id,
        "tier": _TIER_NAMES.get(reply.tier, ""),
        "cache": _CACHE_NAMES.get(reply.cache_status, ""),
        "model": reply.model,
        "model_version": reply.model_version,
        "model_variant": reply.model_variant,
        "template_version": reply.template_version,
        "cost_usd": reply.cost_usd,
        "overhead_ms": round(reply.overhead_ms, 3),
        "degraded": reply.degraded,
        "degraded_reasons": list(reply.degraded_reasons),
        "guardrail_findings": [{"stage": f.stage, "entity": f.entity, "action": f.action,
                                "score": round(f.score, 4)} for f in reply.guardrail_findings],
    }


def headers(reply: inference_pb2.GenerateResponse) -> dict[str, str]:
    """The same fields as x-llmsuite-* response headers (unary answers; a stream's
    headers go out before they are known, so there only the request id)."""
    values = {
        "x-llmsuite-request-id": reply.request_id,
        "x-llmsuite-tier": _TIER_NAMES.get(reply.tier, ""),
        "x-llmsuite-cache": _CACHE_NAMES.get(reply.cache_status, ""),
        "x-llmsuite-model": reply.model,
        "x-llmsuite-model-version": reply.model_version,
        "x-llmsuite-model-variant": reply.model_variant,
        "x-llmsuite-template-version": reply.template_version,
        "x-llmsuite-cost-usd": f"{reply.cost_usd:.8f}",
        "x-llmsuite-overhead-ms": f"{reply.overhead_ms:.3f}",
        "x-llmsuite-degraded": "true" if reply.degraded else "false",
    }
    if reply.degraded_reasons:
        values["x-llmsuite-degraded-reasons"] = ",".join(reply.degraded_reasons)
    if reply.guardrail_findings:
        values["x-llmsuite-guardrail-findings"] = ",".join(
            f"{f.stage}:{f.entity}:{f.action}" for f in reply.guardrail_findings)
    return values


def chat_completion(reply: inference_pb2.GenerateResponse, completion: Completion) -> dict:
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": finish_reason(reply), "logprobs": None}],
        "usage": usage(reply),
        "llmsuite": extension(reply),
    }


def chunk(completion: Completion, delta: dict, finish: str | None = None, *, with_usage: bool = False) -> dict:
    """One chat.completion.chunk; with stream_options.include_usage every chunk says
    `usage: null` and the last one (see usage_chunk) carries the totals."""
    body = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if with_usage:
        body["usage"] = None
    return body


def final_chunk(reply: inference_pb2.GenerateResponse, completion: Completion, *, with_usage: bool) -> dict:
    body = chunk(completion, {}, finish_reason(reply), with_usage=with_usage)
    body["llmsuite"] = extension(reply)
    return body


def usage_chunk(reply: inference_pb2.GenerateResponse, completion: Completion) -> dict:
    return {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model, "choices": [], "usage": usage(reply)}


def embedding_texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise bad_request("input is empty", "input")
    if not all(isinstance(item, str) for item in value):
        raise bad_request("input must be a string or a list of strings; token arrays are not supported", "input")
    return list(value)


def _encoded(values, encoding_format: str):
    if encoding_format == "base64":
        # OpenAI's base64 form: the float32 values, little-endian, base64-encoded.
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


def embeddings(reply: retrieval_pb2.EmbedResponse, model: str, encoding_format: str) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": _encoded(row.values, encoding_format)}
                 for index, row in enumerate(reply.embeddings)],
        "model": model,
        "usage": {"prompt_tokens": reply.input_tokens, "total_tokens": reply.input_tokens},
    }
