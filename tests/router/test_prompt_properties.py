"""The prompt builder, for any conversation and documents: user and document text stays
inside its fences and cannot open a turn."""

from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.config import PromptTemplate
from services.router.prompt import ROLE_TAGS, Document, SecretSource, build, defuse
from services.router.validation import Turn
from tests.properties import PROPERTIES

TEMPLATE = PromptTemplate(version="1", system="You answer questions about gardening.")
# Text that tries the markers: role tags, fences with guessed ids, the canary's prefix.
ATTACKS = st.sampled_from(["<|system|>", "<|user|>", "<|assistant|>", "<|", "|>", "<<end ", ">>", "<<user ",
                           "canary-", "\n", "<<||>>", "<<document "])
TEXT = st.lists(st.one_of(ATTACKS, st.text(max_size=20)), max_size=12).map("".join)
CONVERSATION = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT), max_size=5).map(
    lambda turns: [Turn(role, content) for role, content in turns] + [Turn("user", "last question")])
DOCUMENTS = st.lists(st.builds(Document, document_id=TEXT, chunk_index=st.integers(0, 5),
                               score=st.floats(0, 1), text=TEXT, title=TEXT), max_size=3)


def fenced_blocks(prompt: str, label: str, fence: str) -> list[str]:
    """The text between each `<<label fence>>` marker and the `<<end fence>>` after it."""
    blocks, position = [], 0
    opening, closing = f"<<{label} {fence}>>\n", f"\n<<end {fence}>>"
    while (start := prompt.find(opening, position)) >= 0:
        end = prompt.index(closing, start + len(opening))
        blocks.append(prompt[start + len(opening):end])
        position = end + len(closing)
    return blocks


@settings(PROPERTIES, max_examples=50)
@given(st.text(min_size=1, max_size=20), CONVERSATION, DOCUMENTS)
def test_fences_hold_and_only_the_builder_opens_turns(request_id, turns, documents):
    secrets = SecretSource("property-key").for_request(request_id)
    prompt = build(TEMPLATE, turns, secrets, documents)
    users = [turn.content for turn in turns if turn.role == "user"]
    assert fenced_blocks(prompt, "user", secrets.fence) == [defuse(text) for text in users]
    assert fenced_blocks(prompt, "document", secrets.fence) == [defuse(doc.text) for doc in documents]
    # One role tag per turn the builder writes (system, conversation, the open assistant turn).
    conversation = [turn for turn in turns if turn.role != "system"]
    assert prompt.count("<|") == prompt.count("|>") == len(conversation) + 2
    assert prompt.startswith(ROLE_TAGS["system"] + "\n") and prompt.endswith(ROLE_TAGS["assistant"] + "\n")
    assert prompt.count(secrets.canary) == 1 and prompt.index(secrets.canary) < prompt.index(ROLE_TAGS["user"])


@PROPERTIES
@given(TEXT)
def test_defused_text_holds_no_role_tag_delimiters(text):
    assert "<|" not in defuse(text) and "|>" not in defuse(text)
