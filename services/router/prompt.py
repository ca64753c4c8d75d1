"""Rendering a conversation into the prompt text a model receives."""

from services.router.validation import Turn

ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}


def render(turns: tuple[Turn, ...]) -> str:
    """A chat-template rendering ending with the assistant's open turn."""
    parts = [f"{ROLE_TAGS[turn.role]}\n{turn.content}" for turn in turns]
    parts.append(ROLE_TAGS["assistant"] + "\n")
    return "\n".join(parts)
