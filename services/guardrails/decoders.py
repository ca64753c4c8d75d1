"""Decoding of payloads hidden in a prompt: base64, hex, binary, rot13 and reversed text.

Each decoder returns readable candidate texts; injection.py runs the pattern
families on them, so "aWdub3JlIGFsbCBwcmV2aW91cyBpbnN0cnVjdGlvbnM=" is caught like
its plain form. Candidates must decode to mostly printable text, which keeps
random tokens (hashes, ids) from producing noise.
"""

import base64
import binascii
import codecs
import re
from dataclasses import dataclass

# Long enough to hold a short instruction; shorter runs are usually ids or words.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9a-fA-F])(?:(?:0x|\\x)?[0-9a-fA-F]{2}[\s:,]?){8,}(?![0-9a-fA-F])")
_HEX_PREFIX = re.compile(r"0x|\\x|[\s:,]")
# Eight or more bytes written as groups of eight binary digits ("01001001 01100111 ...").
_BINARY = re.compile(r"(?<![01])(?:[01]{8}[\s,]?){8,}(?![01])")
# At most this many candidates per decoder, so a prompt full of tokens stays cheap.
_MAX_CANDIDATES = 8
# Undecodable bytes dropped in front of a hex payload (from hex-letter words before it).
_MAX_JUNK_BYTES = 4


@dataclass(frozen=True)
class Decoded:
    encoding: str  # "base64", "hex", "binary", "rot13", "reversed"
    text: str


def _readable(text: str) -> bool:
    """Mostly letters and spaces, as natural-language instructions are."""
    if len(text) < 8:
        return False
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    return printable / len(text) > 0.95 and letters / len(text) > 0.7 and " " in text


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_base64(text: str) -> list[str]:
    found = []
    for match in _BASE64.finditer(text):
        token = match.group(0)
        # Runs of plain letters are words, not base64: require a digit, case mix or padding.
        if token.isalpha() and (token.islower() or token.isupper()):
            continue
        padded = token + "=" * (-len(token) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                value = _utf8(decode(padded))
            except (binascii.Error, ValueError):
                continue
            if value and _readable(value):
                found.append(value)
                break
        if len(found) >= _MAX_CANDIDATES:
            break
    return found


def _utf8_after_junk(raw: bytes) -> str | None:
    """raw as UTF-8, once up to _MAX_JUNK_BYTES undecodable bytes in front are dropped.

    A word of hex letters before a payload ("be", "cafe") joins its match: "be 4920..."
    reads as the bytes 0xbe 0x49 0x20 ..., which no longer decode.
    """
    for _ in range(_MAX_JUNK_BYTES + 1):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start:
                return None
            raw = raw[1:]
    return None


def decode_hex(text: str) -> list[str]:
    found = []
    for match in _HEX.finditer(text):
        digits = _HEX_PREFIX.sub("", match.group(0))
        if len(digits) % 2:
            digits = digits[:-1]
        try:
            value = _utf8_after_junk(bytes.fromhex(digits))
        except ValueError:
            continue
        if value and _readable(value):
            found.append(value)
        if len(found) >= _MAX_CANDIDATES:
            break
    return found


def decode_binary(text: str) -> list[str]:
    found = []
    for match in _BINARY.finditer(text):
        bits = re.sub(r"[\s,]", "", match.group(0))
        value = _utf8(bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits) - len(bits) % 8, 8)))
        if value and _readable(value):
            found.append(value)
        if len(found) >= _MAX_CANDIDATES:
            break
    return found


def decode_rot13(text: str) -> str:
    return codecs.decode(text, "rot_13")


def decode_reversed(text: str) -> str:
    return text[::-1]


def decoded_views(text: str) -> list[Decoded]:
    """Every decoded reading of text worth checking for hidden instructions."""
    views = [Decoded("base64", value) for value in decode_base64(text)]
    views += [Decoded("hex", value) for value in decode_hex(text)]
    views += [Decoded("binary", value) for value in decode_binary(text)]
    if sum(map(str.isalpha, text)) >= 8:
        views.append(Decoded("rot13", decode_rot13(text)))
        views.append(Decoded("reversed", decode_reversed(text)))
    return views
