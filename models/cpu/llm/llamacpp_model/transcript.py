"""The conversation inside `text_input`, as chat messages for the model's own template.

The router renders a conversation as role-tagged turns (services/router/prompt.py):

    <|system|>\n...\n<|user|>\n...\n<|assistant|>\n

The chat template is the model's business, so it is applied in one place only: here,
by llama.cpp with the template stored in the GGUF file. The router's turns become
messages again, their text unchanged (fences and canary included); the open
assistant turn at the end is where generation starts. The router defuses role tags
inside user and document text (`< |user| >`), so only its own tags start a turn.
A prompt that does not start with a role tag is one user message.
"""

import re

_TURN = re.compile(r"^<\|(system|user|assistant)\|>\n", re.MULTILINE)


def messages(text: str) -> list[dict[str, str]]:
    """Chat messages ({role, content}) of a rendered conversation or a plain prompt."""
    if not _TURN.match(text):
        return [{"role": "user", "content": text}]
    parts = _TURN.split(text)
    turns = []
    # split() gives ["", role, content, role, content, ...]; the newline that
    # separates one turn from the next tag belongs to neither.
    for role, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": role, "content": content[:-1] if content.endswith("\n") else content})
    if turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # the open turn: the template's generation prompt takes its place
    return turns
