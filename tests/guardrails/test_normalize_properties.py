"""Properties of normalisation and the payload decoders, for any text."""

import base64
import codecs
import string

from hypothesis import assume, given
from hypothesis import strategies as st

from services.guardrails.decoders import decode_base64, decode_hex, decode_reversed, decode_rot13, decoded_views
from services.guardrails.normalize import INVISIBLE, normalize
from tests.properties import PROPERTIES

LETTERS = st.text(alphabet=string.ascii_lowercase, min_size=4, max_size=12)
# Latin letters and their look-alikes (normalize.py maps the look-alikes back).
LOOK_ALIKES = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і"}
LEET = {"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7"}


@PROPERTIES
@given(st.text(max_size=400))
def test_normalize_never_fails_and_cleans(text):
    norm = normalize(text)
    assert norm.clean == norm.clean.lower()
    assert not any(chr(code) in norm.clean for code in INVISIBLE)
    assert "  " not in norm.clean and "\t" not in norm.clean and norm.clean == norm.clean.strip()
    assert norm.views()[0] == norm.clean and len(norm.views()) == (1 if norm.skeleton == norm.clean else 2)
    assert min(norm.invisible_chars, norm.mixed_script_words, norm.spaced_letters) >= 0


@PROPERTIES
@given(st.lists(LETTERS, min_size=1, max_size=6), st.data())
def test_obfuscated_words_normalise_to_the_plain_words(words, data):
    plain = " ".join(words)
    invisible = st.sampled_from(sorted(chr(code) for code in INVISIBLE))
    hidden = " ".join(data.draw(invisible).join(word) for word in words)
    assert normalize(hidden).clean == plain
    glyphed = "".join(LOOK_ALIKES.get(ch, ch) if data.draw(st.booleans()) else ch for ch in plain)
    assert normalize(glyphed).skeleton == plain


@PROPERTIES
@given(LETTERS.filter(lambda w: any(ch in LEET for ch in w)), st.data())
def test_leetspeak_words_are_undone(word, data):
    replaced = [i for i, ch in enumerate(word) if ch in LEET]
    chosen = data.draw(st.sets(st.sampled_from(replaced), min_size=1))
    leet = "".join(LEET[ch] if i in chosen else ch for i, ch in enumerate(word))
    assume(any(ch.isalpha() for ch in leet))  # all digits is a number, left alone on purpose
    assert normalize(f"please {leet} now").skeleton == f"please {word} now"


@PROPERTIES
@given(st.text(max_size=300))
def test_decoders_never_fail_and_offer_readable_text_only(text):
    for candidate in decode_base64(text) + decode_hex(text):
        assert isinstance(candidate, str) and len(candidate) >= 8 and " " in candidate
    assert len(decode_base64(text)) <= 8 and len(decode_hex(text)) <= 8
    assert decode_rot13(decode_rot13(text)) == text and decode_reversed(decode_reversed(text)) == text
    encodings = [view.encoding for view in decoded_views(text)]
    assert set(encodings) <= {"base64", "hex", "rot13", "reversed"}
    assert ("rot13" in encodings) == (sum(map(str.isalpha, text)) >= 8)


PAYLOADS = st.lists(st.text(alphabet=string.ascii_letters, min_size=2, max_size=9), min_size=2, max_size=8).map(
    " ".join).filter(lambda p: len(p) >= 12)
SURROUNDING = st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), max_size=4).map(" ".join)


@PROPERTIES
@given(PAYLOADS, SURROUNDING, SURROUNDING, st.sampled_from(["standard", "urlsafe", "unpadded"]))
def test_a_base64_payload_anywhere_is_decoded(payload, before, after, variant):
    encode = base64.b64encode if variant == "standard" else base64.urlsafe_b64encode
    token = encode(payload.encode()).decode()
    token = token.rstrip("=") if variant == "unpadded" else token
    # A run of letters in one case reads as a word, not base64 (on purpose).
    assume(not (token.isalpha() and (token.islower() or token.isupper())))
    assert payload in decode_base64(f"{before} {token} {after}")


@PROPERTIES
@given(PAYLOADS, SURROUNDING, st.sampled_from(["", " ", ":", "\\x"]))
def test_a_hex_payload_is_decoded_with_any_separator(payload, before, separator):
    data = payload.encode()
    if separator == "\\x":
        token = "".join(f"\\x{byte:02x}" for byte in data)
    else:
        token = separator.join(f"{byte:02x}" for byte in data)
    assert payload in decode_hex(f"{before} {token}")


@PROPERTIES
@given(PAYLOADS)
def test_rot13_and_reversed_payloads_are_offered_decoded(payload):
    views = {(view.encoding, view.text) for view in decoded_views(codecs.encode(payload, "rot_13"))}
    assert ("rot13", payload) in views
    assert ("reversed", payload) in {(view.encoding, view.text) for view in decoded_views(payload[::-1])}
