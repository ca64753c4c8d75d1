"""Recognizers the suite adds to Presidio: secrets, and an email recognizer that stays offline.

Presidio's EmailRecognizer validates domains with `tldextract.extract`, whose default
extractor downloads the public suffix list on first use; here the extractor reads
only the snapshot bundled with tldextract (no network, no cache directory).

Every recognizer here runs in time linear in the text's length, whatever the text:
no pattern can rescan an unbounded stretch from each of many positions. The
property tests in tests/guardrails/test_pii_properties.py hold them to it.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Callable

import tldextract
from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, RecognizerResult
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, UrlRecognizer

from services.guardrails.spans import SpanSet

# suffix_list_urls=() means "never fetch"; cache_dir=None means "never write".
OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    def validate_result(self, pattern_text: str) -> bool:
        return OFFLINE_TLD(pattern_text).fqdn != ""


def _card_network_ok(digits: str) -> bool:
    """Issuer prefix and length of a known card network (Visa, Mastercard, Amex, Diners,
    JCB, Discover, UnionPay, Maestro)."""
    n = len(digits)
    if digits[0] == "4":
        return n in (13, 16, 19)
    if "51" <= digits[:2] <= "55" or "2221" <= digits[:4] <= "2720":
        return n == 16
    if digits[:2] in ("34", "37"):
        return n == 15
    if digits[:2] in ("36", "38", "39") or "300" <= digits[:3] <= "305" or digits[:3] == "309":
        return n in (14, 16)
    if digits[:2] == "35":
        return 16 <= n <= 19
    if digits[:4] in ("2131", "1800"):
        return n == 15
    if digits[:2] == "50" or "56" <= digits[:2] <= "69":
        return 12 <= n <= 19
    return False


class CardRecognizer(CreditCardRecognizer):
    """Card numbers of 12 to 19 digits, with or without separators, that pass the Luhn
    check and carry a known network's prefix and length. Presidio's own pattern stops
    at 16 digits and misses 2-series Mastercard and 19-digit Visa numbers."""

    PATTERNS = [Pattern("Card number (Luhn and network checked)",
                        r"(?<![\d.-])(?:\d[ -]?){11,18}\d(?![\d-]|\.\d)", 0.3)]

    def __init__(self):
        super().__init__(patterns=self.PATTERNS)

    def validate_result(self, pattern_text: str) -> bool:
        digits = EntityRecognizer.sanitize_value(pattern_text, self.replacement_pairs)
        return _card_network_ok(digits) and super().validate_result(pattern_text)


# Words near a number that say it is a phone number.
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|tel|telephone|call|called|calling|mobile|cell|cellphone|fax|desk|office|number|contact|"
    r"reach|dial|answering|messages?|sms|text me|whatsapp|registered|hotline|landline)\b", re.IGNORECASE)
# Formats that are phone numbers on their own: a +country prefix, an area code in
# parentheses, or North American 3-3-4 grouping (optionally with an extension).
_PHONE_STRONG = re.compile(
    r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{2,5}){1,4}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?!\w|[.-]\d)"
    r"|(?<![\w+.-])(?:001[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?!\w|[.-]\d)"
    r"|(?<![\w+.-])\(\d{2,4}\) ?\d{3,4}[ .-]?\d{3,4}(?!\w|[.-]\d)")
# Digit groups that may be a phone number, accepted only next to a context word.
_PHONE_WEAK = re.compile(
    r"(?<![\w+.-])(?:\d{2,5}(?:[ .-]\d{2,8}){1,4}|0\d{9,10}|\d{10})(?!\w|[.-]\d)")
# Shapes that are dates or US social security numbers, not phone numbers.
_NOT_PHONE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{3}-\d{2}-\d{4})$")



class PhoneNumberRecognizer(LocalRecognizer):
    """Phone numbers in national and international formats, by pattern and context.

    Presidio's recognizer (the phonenumbers library) accepts only numbers valid in a
    short list of regions and costs about a millisecond per number; this one is a
    few regular expressions. Weak formats (bare digit groups) count only with a
    context word within a few words before or right after.
    """

    STRONG_SCORE = 0.6
    WEAK_SCORE = 0.2
    CONTEXT_BOOST = 0.35
    MIN_DIGITS, MAX_DIGITS = 7, 15

    def __init__(self):
        super().__init__(supported_entities=["PHONE_NUMBER"], name="PhoneNumberRecognizer")

    def load(self) -> None:
        return None

    @staticmethod
    def _has_context(text: str, start: int, end: int) -> bool:
        before = text[max(0, start - 40):start]
        after = text[end:end + 16]
        return bool(_PHONE_CONTEXT.search(before) or _PHONE_CONTEXT.search(after.split("\n", 1)[0]))

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        taken = SpanSet()  # a weak match inside a strong one is the same number
        for regex, score in ((_PHONE_STRONG, self.STRONG_SCORE), (_PHONE_WEAK, self.WEAK_SCORE)):
            for match in regex.finditer(text):
                start, end = match.span()
                value = match.group(0)
                digits = sum(ch.isdigit() for ch in value)
                if not self.MIN_DIGITS <= digits <= self.MAX_DIGITS + 5 or _NOT_PHONE.match(value):
                    continue
                if taken.overlaps(start, end):
                    continue
                if self._has_context(text, start, end):
                    score_here = min(score + self.CONTEXT_BOOST, 1.0)
                else:
                    score_here = score
                taken.add(start, end)
                results.append(RecognizerResult("PHONE_NUMBER", start, end, score_here))
        return results


# Presidio's URL pattern, `[a-z0-9.\-]{1,253}[.](?:com|edu|...)`, backtracks through up
# to 253 characters and tries each of its ~500 top-level domains at every position
# of a run of letters, digits and dots: 8 KB of "1.1.1.1." cost 5-6 s of CPU. Here
# a run is matched once, from its first character, and its labels are looked up in
# a set of the same top-level domains.
URL_TLDS = frozenset(re.findall(r"\(\?:([a-z]+)\)", UrlRecognizer.BASE_URL_REGEX))
_URL = re.compile(r"(?<![a-z0-9.\-])(https?://)?([a-z0-9\-]+(?:\.[a-z0-9\-]+)+)(/[^\s()<>\"']*)?", re.IGNORECASE)


class LinearUrlRecognizer(UrlRecognizer):
    """URLs as Presidio's recognizer finds them (same top-level domains, scores and
    context words), in linear time.

    A dotted run counts up to its last label that is a top-level domain
    ("docs.python.org/3/", "see example.com.", "example.com.1.2" -> "example.com");
    unlike Presidio's pattern a label must be the whole top-level domain
    ("example.comx" is not "example.com").
    """

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None, regex_flags=None) -> list[RecognizerResult]:
        results = []
        for match in _URL.finditer(text):
            labels = match.group(2).split(".")
            last = max((i for i in range(1, len(labels)) if labels[i].lower() in URL_TLDS), default=0)
            if not last:
                continue
            end = match.end() if last == len(labels) - 1 else match.start(2) + len(".".join(labels[:last + 1]))
            score = 0.6 if match.group(1) else 0.5
            # The context enhancer records the context word that lifted a score in the explanation.
            explanation = self.build_regex_explanation(self.name, "URL", _URL.pattern, score, None, _URL.flags)
            results.append(RecognizerResult("URL", match.start(), end, score, analysis_explanation=explanation))
        return results


def _iban_checksum_ok(value: str) -> bool:
    compact = value.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1
    except ValueError:
        return False


class AnyCaseIbanRecognizer(LocalRecognizer):
    """IBANs written in lower or mixed case, which Presidio's recognizer (upper case
    only) misses; accepted on the ISO 13616 mod-97 checksum."""

    _IBAN = re.compile(
        r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])")

    def __init__(self):
        super().__init__(supported_entities=["IBAN_CODE"], name="AnyCaseIbanRecognizer")

    def load(self) -> None:
        return None

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [RecognizerResult("IBAN_CODE", match.start(), match.end(), 0.9)
                for match in self._IBAN.finditer(text)
                if not match.group(0).isupper() and _iban_checksum_ok(match.group(0))]


def _jwt_header_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


@dataclass(frozen=True)
class SecretPattern:
    regex: re.Pattern
    score: float
    group: int = 0  # which group is the secret itself (0: the whole match)
    validate: Callable[[str], bool] | None = None


class SecretRecognizer(LocalRecognizer):
    """One secret entity found by regular expressions (and an optional validator).

    Secrets are matched on the whole text, not on the analyzer's chunks (pii.py): a
    private key or a JWT can be longer than the chunks' overlap.
    """

    def __init__(self, entity: str, patterns: list[SecretPattern]):
        self._secret_patterns = patterns
        super().__init__(supported_entities=[entity], name=f"{entity.title().replace('_', '')}Recognizer")

    def load(self) -> None:
        return None

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        entity = self.supported_entities[0]
        results = []
        for pattern in self._secret_patterns:
            for match in pattern.regex.finditer(text):
                value = match.group(pattern.group)
                if pattern.validate and not pattern.validate(value):
                    continue
                results.append(RecognizerResult(entity, match.start(pattern.group), match.end(pattern.group),
                                                pattern.score))
        return results


def _p(regex: str, score: float, group: int = 0, validate: Callable[[str], bool] | None = None,
       flags: int = 0) -> SecretPattern:
    return SecretPattern(re.compile(regex, flags), score, group, validate)


PRIVATE_KEY_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_BODY = re.compile(r"(?:[A-Za-z0-9+/=:\-\s]|\\n)*")


class PrivateKeyRecognizer(SecretRecognizer):
    """A private key block from its BEGIN line to its END line. An unterminated one
    (a truncated paste, or a stream cut short) is still a key: its BEGIN line and the
    base64 body that follows.

    As one regex (BEGIN, then a lazy scan for END) every BEGIN line without an END
    rescanned the rest of the text: quadratic in the number of BEGIN lines. Here the
    search for an END line runs past any position at most once.
    """

    def __init__(self):
        super().__init__("PRIVATE_KEY", [])

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        results = []
        position, ends_ahead = 0, True
        while begin := PRIVATE_KEY_BEGIN.search(text, position):
            end = _PRIVATE_KEY_END.search(text, begin.end()) if ends_ahead else None
            if end is None:
                ends_ahead = False  # none after this BEGIN, so none after any later one
                position = _PRIVATE_KEY_BODY.match(text, begin.end()).end()
            else:
                position = end.end()
            results.append(RecognizerResult("PRIVATE_KEY", begin.start(), position, 1.0))
        return results


SECRET_PATTERNS: dict[str, list[SecretPattern]] = {
    "AWS_ACCESS_KEY": [
        _p(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}"
           r"(?![A-Z0-9])", 0.95),
    ],
    "AWS_SECRET_KEY": [
        # `\s*(?:["']\s*)?`, not `\s*["']?\s*`: two adjacent `\s*` split a run of spaces
        # every possible way (quadratic in the run's length).
        _p(r"aws_?secret_?(?:access_?)?key\s*(?:[\"']\s*)?[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", 0.95,
           group=1, flags=re.IGNORECASE),
    ],
    "GITHUB_TOKEN": [
        _p(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])", 0.95),
        _p(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{82}(?![A-Za-z0-9_])", 0.95),
    ],
    "SLACK_TOKEN": [
        _p(r"(?<![A-Za-z0-9-])xox[abposr]-(?:[A-Za-z0-9]+-){1,4}[A-Za-z0-9]{6,}(?![A-Za-z0-9-])", 0.9),
        _p(r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}", 0.95),
    ],
    "OPENAI_API_KEY": [
        # sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...: OpenAI-style keys (Anthropic's sk-ant- too).
        _p(r"(?<![A-Za-z0-9_-])sk-(?:[a-z]+-)?[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", 0.9),
    ],
    "JWT": [
        _p(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}(?![A-Za-z0-9_-])", 0.9,
           validate=_jwt_header_ok),
    ],
}


def secret_recognizers() -> list[SecretRecognizer]:
    return [*(SecretRecognizer(entity, patterns) for entity, patterns in SECRET_PATTERNS.items()),
            PrivateKeyRecognizer()]
