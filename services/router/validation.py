"""Validation of inference requests into one internal shape.

Every problem becomes INVALID_ARGUMENT naming the field and the accepted range,
so a caller can fix the request without reading server logs.
"""

from dataclasses import dataclass

from llmsuite.inference.v1 import inference_pb2

from services.common.errors import InvalidArgument
from services.common.sampling import Sampling, parse_sampling
from services.router.config import RouterSettings, TenantSettings

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
# The OpenAI-compatible API accepts a `user` this long too (services/openai/schema.py).
MAX_USER_CHARS = 256
_ROLE_NAMES = {
    inference_pb2.ROLE_SYSTEM: "system",
    inference_pb2.ROLE_USER: "user",
    inference_pb2.ROLE_ASSISTANT: "assistant",
}


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class InferenceRequest:
    turns: tuple[Turn, ...]
    sampling: Sampling
    model: str = ""
    tier: int = inference_pb2.TIER_UNSPECIFIED
    session_id: str | None = None
    cache_policy: int = inference_pb2.CACHE_POLICY_UNSPECIFIED
    retrieval_collection: str = ""
    retrieval_top_k: int = 0
    retrieval_score_threshold: float | None = None
    # True when the request used `prompt` rather than `messages` (for error fields).
    from_prompt: bool = False
    # The end user the caller named (empty: none).
    user: str = ""


def _turns(request, settings: RouterSettings, allow_system: bool) -> tuple[Turn, ...]:
    if request.prompt and request.messages:
        raise InvalidArgument("set either prompt or messages, not both", field="prompt")
    if len(request.messages) > settings.max_messages:
        raise InvalidArgument(f"too many messages: {len(request.messages)} (at most {settings.max_messages})",
                              field="messages")
    if request.prompt:
        turns = (Turn("user", request.prompt),)
    else:
        turns = []
        for index, message in enumerate(request.messages):
            role = _ROLE_NAMES.get(message.role)
            if role is None:
                raise InvalidArgument(f"messages[{index}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
                                      field=f"messages[{index}].role")
            if role == "system" and not allow_system:
                raise InvalidArgument("system messages are not accepted from clients for this deployment; "
                                      "the tenant's prompt template sets the system prompt",
                                      field=f"messages[{index}].role", reason="CLIENT_SYSTEM_PROMPT_NOT_ALLOWED")
            turns.append(Turn(role, message.content))
        turns = tuple(turns)
    if not turns or not any(turn.content.strip() for turn in turns if turn.role == "user"):
        raise InvalidArgument("the prompt is empty: set prompt, or messages with a non-empty user message",
                              field="prompt")
    size = sum(len(turn.content) for turn in turns)
    if size > settings.max_prompt_chars:
        raise InvalidArgument(f"the prompt is too long: {size} characters (at most {settings.max_prompt_chars})",
                              field="prompt", reason="PROMPT_TOO_LONG")
    return turns


def _sampling(params, settings: RouterSettings) -> Sampling:
    return parse_sampling(params, default_max_tokens=settings.default_max_tokens,
                          max_tokens_limit=settings.max_output_tokens, max_stop_strings=MAX_STOP_STRINGS,
                          max_stop_chars=MAX_STOP_CHARS)


def _session_id(request, settings: RouterSettings) -> str | None:
    if not request.HasField("session_id"):
        return None
    session_id = request.session_id
    if not session_id or len(session_id) > settings.max_session_id_chars or not session_id.isprintable():
        raise InvalidArgument(f"session_id must be 1 to {settings.max_session_id_chars} printable characters",
                              field="session_id")
    return session_id


def validate(request, settings: RouterSettings, tenant: TenantSettings | None = None) -> InferenceRequest:
    """Checks a GenerateRequest or GenerateStreamRequest (they share their fields).

    `tenant` may allow client system prompts where the router-wide setting does not.
    """
    allow_system = settings.allow_client_system_prompt
    if tenant is not None and tenant.allow_client_system_prompt is not None:
        allow_system = tenant.allow_client_system_prompt
    turns = _turns(request, settings, allow_system)
    sampling = _sampling(request.sampling, settings)
    if request.tier == inference_pb2.TIER_CACHE:
        raise InvalidArgument("tier TIER_CACHE cannot be pinned; use cache_policy to control the cache",
                              field="tier")
    if request.tier not in (inference_pb2.TIER_UNSPECIFIED, inference_pb2.TIER_LIGHT, inference_pb2.TIER_FULL):
        raise InvalidArgument("unknown tier", field="tier")
    if request.cache_policy not in inference_pb2.CachePolicy.values():
        raise InvalidArgument("unknown cache_policy", field="cache_policy")
    if turns[-1].role != "user":
        raise InvalidArgument("the last message must be the user's (ROLE_USER): it is what the model answers",
                              field=f"messages[{len(turns) - 1}].role")
    if len(request.model) > 128:
        raise InvalidArgument("model name too long (at most 128 characters)", field="model")
    if len(request.user) > MAX_USER_CHARS or not request.user.isprintable():
        raise InvalidArgument(f"user must be at most {MAX_USER_CHARS} printable characters", field="user")
    retrieval = request.retrieval
    if retrieval.collection and not 0 <= retrieval.top_k <= 20:
        raise InvalidArgument("retrieval.top_k must be between 1 and 20 (0 for the default of 4)",
                              field="retrieval.top_k")
    return InferenceRequest(
        turns=turns,
        sampling=sampling,
        model=request.model,
        tier=request.tier,
        session_id=_session_id(request, settings),
        cache_policy=request.cache_policy,
        retrieval_collection=retrieval.collection,
        retrieval_top_k=retrieval.top_k or 4,
        retrieval_score_threshold=retrieval.score_threshold if retrieval.HasField("score_threshold") else None,
        from_prompt=bool(request.prompt),
        user=request.user,
    )
