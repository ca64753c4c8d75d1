"""The request bodies this API accepts, validated into typed objects.

Fields OpenAI defines and this API does not know are ignored, as the SDKs expect of a
compatible server. A few that would silently change the answer if ignored (tools,
log probabilities, structured output) are refused with a 400 naming the field.
"""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.openai.errors import bad_request

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
MAX_USER_CHARS = 256


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ChatMessage(_Body):
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant"]
    # A string, or a list of content parts of which only text parts are accepted.
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)
    stop: str | list[str] | None = None
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Known to OpenAI, not served here: checked by `unsupported` below.
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1, max_length=128)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = Field(None, max_length=MAX_USER_CHARS)


def parse_json(raw: bytes) -> Any:
    """The body as JSON; anything else is a 400 that says what is wrong."""
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        # Decoded here: json.loads would guess UTF-16 or UTF-32 from the first bytes.
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as err:
        raise bad_request(f"the request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") \
            from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None


# Union branches pydantic names in an error's location (stop: str | list[str] gives
# ("stop", "list[str]", 0)); callers sent fields, not types.
_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def _location(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in part and part not in _TYPE_NAMES:
            path += f".{part}" if path else part
    return path


def validated(model: type[_Body], data: Any) -> Any:
    """`data` as `model`; the first problem is a 400 naming the field (OpenAI's `param`)."""
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = _location(first["loc"])
        raise bad_request(f"{param or 'body'}: {first['msg']}", param or None) from None


def unsupported(request: ChatCompletionRequest) -> None:
    """Refuses what this API cannot honour, where ignoring it would change the answer."""
    if request.n not in (None, 1):
        raise bad_request(f"n must be 1: this API returns one choice per request, got {request.n}", "n")
    if request.tools or request.functions:
        param = "tools" if request.tools else "functions"
        raise bad_request("tool and function calling is not supported by this API", param)
    if request.logprobs:
        raise bad_request("log probabilities are not supported by this API", "logprobs")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise bad_request("only response_format type 'text' is supported by this API", "response_format")
