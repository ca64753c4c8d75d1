"""Guards that stop the semantic cache from answering a question with another's answer.

Sentence embeddings place "How do I install a package?" and "How do I uninstall a
package?" close together: they share topic and form, and differ in the one word
that matters. Cosine similarity alone would need a threshold so high that real
paraphrases rarely match. So a semantic hit also needs the two questions to agree
on what cheap lexical checks can see:

- anchors: numbers, names and acronyms ("Japan", "2008", "GPU") appear in both;
- answer type: question words that ask for different things (who / when / where /
  why / how many / how long / how often) do not mix;
- direction: "Celsius to Fahrenheit" is not "Fahrenheit to Celsius";
- opposites: a word in one question whose opposite is in the other (install and
  uninstall, largest and smallest) is a different question.
These checks were chosen, and the threshold tuned, on evals/data/routing_train.jsonl;
`make eval-routing` measures them on a separate workload.
"""

import re

_WORD = re.compile(r"\w+")
_ANCHOR_TOKEN = re.compile(r"\w+|[.!?]")
_DETERMINERS = frozenset({"a", "an", "the", "my", "your", "our", "their", "its", "his", "her", "this", "that",
                          "these", "those", "some", "any"})
_DIRECTION_WORDS = frozenset({"to", "into"})

# Question openings and the kind of answer they ask for; "what", "which" and a
# bare "how" fit any answer, so they are left out.
_ANSWER_TYPES = (
    ("how many", "count"), ("how much", "amount"), ("how long", "duration"), ("how often", "frequency"),
    ("how far", "distance"), ("how old", "age"), ("who", "person"), ("whom", "person"), ("whose", "person"),
    ("when", "time"), ("where", "place"), ("why", "reason"),
)

_OPPOSITE_PAIRS = (
    ("install", "uninstall"), ("add", "remove"), ("create", "delete"), ("start", "stop"), ("open", "close"),
    ("read", "write"), ("upload", "download"), ("import", "export"), ("encrypt", "decrypt"),
    ("encode", "decode"), ("enable", "disable"), ("push", "pull"), ("buy", "sell"), ("win", "lose"),
    ("increase", "decrease"), ("before", "after"), ("first", "last"), ("min", "max"), ("minimum", "maximum"),
    ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"), ("longest", "shortest"),
    ("fastest", "slowest"), ("best", "worst"), ("most", "least"), ("more", "less"), ("hot", "cold"),
    ("soft", "hard"), ("high", "low"), ("early", "late"), ("positive", "negative"), ("boiling", "freezing"),
    ("boil", "freeze"), ("north", "south"), ("east", "west"), ("inside", "outside"), ("input", "output"),
    ("lock", "unlock"), ("mount", "unmount"), ("compress", "decompress"), ("serialize", "deserialize"),
    ("born", "died"), ("birth", "death"), ("start", "end"), ("begin", "end"),
)
_OPPOSITES: dict[str, set[str]] = {}
for _left, _right in _OPPOSITE_PAIRS:
    _OPPOSITES.setdefault(_left, set()).add(_right)
    _OPPOSITES.setdefault(_right, set()).add(_left)


def words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def anchor_terms(text: str) -> frozenset[str]:
    """Numbers, names and acronyms: words whose change changes the question."""
    terms = set()
    sentence_start = True
    for match in _ANCHOR_TOKEN.finditer(text):
        token = match.group()
        if token in ".!?":
            sentence_start = True
            continue
        if any(char.isdigit() for char in token):
            terms.add(token.lower())
        elif len(token) > 1 and token[0].isupper() and (not sentence_start or token.isupper()):
            terms.add(token.lower())
        sentence_start = False
    return frozenset(terms)


def answer_types(text: str) -> frozenset[str]:
    lowered = " ".join(words(text))
    found = set()
    for opening, kind in _ANSWER_TYPES:
        if re.search(rf"\b{opening}\b", lowered):
            found.add(kind)
            # "how many" is not also a bare "how"; "who" inside "whose" is not a person twice.
            lowered = re.sub(rf"\b{opening}\b", " ", lowered)
    return frozenset(found)


def direction_targets(tokens: list[str]) -> frozenset[str]:
    """The first word after each "to"/"into", skipping determiners: where a conversion or move goes."""
    targets = set()
    for index, token in enumerate(tokens):
        if token in _DIRECTION_WORDS:
            for following in tokens[index + 1:]:
                if following not in _DETERMINERS:
                    targets.add(following)
                    break
    return frozenset(targets)


def _directions_conflict(a: list[str], b: list[str]) -> bool:
    targets_a, targets_b = direction_targets(a), direction_targets(b)
    # A target of one question that the other mentions, but not as its target,
    # means the two go in different directions.
    return any(t in b and t not in targets_b for t in targets_a) or any(t in a and t not in targets_a for t in targets_b)


def _opposites_conflict(a: set[str], b: set[str]) -> bool:
    only_a, only_b = a - b, b - a
    return any(_OPPOSITES.get(word, set()) & only_b for word in only_a)


def same_question(question: str, other: str) -> bool:
    """Whether the lexical guards let `other`'s answer serve `question` (the embeddings must agree too)."""
    tokens_q, tokens_o = words(question), words(other)
    set_q, set_o = set(tokens_q), set(tokens_o)
    if not (anchor_terms(question) <= set_o and anchor_terms(other) <= set_q):
        return False
    types_q, types_o = answer_types(question), answer_types(other)
    if types_q and types_o and types_q != types_o:
        return False
    if _directions_conflict(tokens_q, tokens_o):
        return False
    return not _opposites_conflict(set_q, set_o)
