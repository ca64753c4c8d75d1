"""Text normalisation that undoes common obfuscation before pattern matching.

Attackers hide instructions from keyword filters with compatibility characters
(fullwidth letters), invisible characters inside words, look-alike letters from
other scripts, letters spaced out one by one and leetspeak. Detection runs on
`views(text)`: the cleaned text, plus a de-obfuscated "skeleton" when it differs.
The original text is never changed for the caller; offsets of PII findings always
refer to the text as sent.
"""

import re
import unicodedata
from dataclasses import dataclass

# Invisible characters used to split words so that "ig\u200bnore" evades a regex:
# zero-width space/non-joiner/joiner, word joiner, BOM, soft hyphen, Mongolian
# vowel separator, and the bidirectional controls used to reorder displayed text.
INVISIBLE = dict.fromkeys(
    [0x200B, 0x200C, 0x200D, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF, 0x00AD, 0x180E,
     0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069],
)

# Look-alike letters (Cyrillic, Greek, Armenian, Latin IPA) that render like ASCII.
# NFKC leaves these alone because they are distinct letters, not compatibility forms.
_HOMOGLYPHS_SOURCE = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ɡ": "g", "һ": "h", "ӏ": "l", "ո": "n", "ս": "u", "օ": "o",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J",
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}
_HOMOGLYPHS = str.maketrans(_HOMOGLYPHS_SOURCE)

# Invisible characters have legitimate uses (emoji sequences, word breaks in Khmer
# or Thai); between two Latin letters they only serve to split a keyword.
_INVISIBLE_IN_WORD = re.compile(
    "(?<=[A-Za-z])[" + "".join(chr(code) for code in INVISIBLE) + "]+(?=[A-Za-z])")

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                       "!": "i", "|": "l", "+": "t"})

# A word that mixes letters with leet digits/symbols, e.g. "1gn0r3" or "pr0mpt";
# pure numbers ("2024") and ordinary punctuation stay as they are.
_LEET_WORD = re.compile(r"(?<![\w@$!|+])(?=[\w@$!|+]*[a-zA-Z])(?=[\w@$!|+]*[0-9@$|+])[\w@$!|+]{3,}")

# Four or more single letters separated by one space or punctuation mark:
# "i g n o r e", "i.g.n.o.r.e", "I-G-N-O-R-E".
_SPACED = re.compile(r"(?<!\w)(?:\w[ .\-_*]){3,}\w(?!\w)")

# Runs of spaces and tabs collapse to one space; line breaks are kept because a
# fake "system:" turn at the start of a line is itself a signal.
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")


@dataclass(frozen=True)
class Normalized:
    """The views of one text that patterns run on."""

    clean: str          # NFKC, invisible characters removed, whitespace collapsed, lower case
    skeleton: str       # clean plus homoglyphs, leetspeak and spaced letters undone
    invisible_chars: int  # invisible characters found between two Latin letters
    mixed_script_words: int  # words mixing Latin with look-alike letters
    spaced_letters: int  # letters in the longest run spaced out one by one

    def views(self) -> tuple[str, ...]:
        return (self.clean,) if self.skeleton == self.clean else (self.clean, self.skeleton)


def strip_invisible(text: str) -> str:
    return text.translate(INVISIBLE)


def unhomoglyph(text: str) -> str:
    return text.translate(_HOMOGLYPHS)


def unleet(text: str) -> str:
    return _LEET_WORD.sub(lambda match: match.group(0).translate(_LEET), text)


def unspace(text: str) -> str:
    """Joins letters spaced out one by one; keeps word gaps marked by double spaces.

    "S a y  t h a t" keeps its word break; "s a y t h a t" (no word gaps) becomes
    "saythat", which the patterns also accept because they allow optional spaces
    between the words of a phrase.
    """
    def join(match: re.Match) -> str:
        return re.sub(r"[ .\-_*]", "", match.group(0))
    return _SPACED.sub(join, text)


_GLYPHS = frozenset(ch for ch in _HOMOGLYPHS_SOURCE if not ch.isascii())
_GLYPH_WORD = re.compile("[" + "".join(sorted(_GLYPHS)) + "]")


def _count_mixed_script(text: str) -> int:
    if text.isascii() or not _GLYPH_WORD.search(text):
        return 0
    return sum(1 for word in text.split()
               if _GLYPH_WORD.search(word) and any("a" <= ch.lower() <= "z" for ch in word))


def _collapse(text: str) -> str:
    return _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()


def _longest_spaced_run(text: str) -> int:
    # A run "a b c" of n letters is 2n - 1 characters long.
    return max(((len(match.group(0)) + 1) // 2 for match in _SPACED.finditer(text)), default=0)


def normalize(text: str) -> Normalized:
    nfkc = unicodedata.normalize("NFKC", text)
    visible = _collapse(strip_invisible(nfkc))
    invisible = len(_INVISIBLE_IN_WORD.findall(nfkc))
    unglyphed = unhomoglyph(visible)
    skeleton = unspace(unleet(unglyphed)).lower()
    return Normalized(clean=visible.lower(), skeleton=skeleton, invisible_chars=invisible,
                      mixed_script_words=_count_mixed_script(visible),
                      spaced_letters=_longest_spaced_run(unglyphed))
