"""Each recognizer, through the real Presidio analyzer (offline)."""

import socket

import pytest

from services.guardrails.recognizers import OFFLINE_TLD


def entities(scanner, text: str, min_score: float = 0.35) -> list[tuple[str, str]]:
    return [(d.entity, text[d.start:d.end]) for d in scanner.scan(text, min_score)]


@pytest.mark.parametrize("entity, value", [
    ("EMAIL_ADDRESS", "jane.doe+news@example.co.uk"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "2297051310616322"),             # 2-series Mastercard
    ("CREDIT_CARD", "4030874397740603788"),          # 19-digit Visa
    ("CREDIT_CARD", "378282246310005"),              # Amex
    ("IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
    ("IBAN_CODE", "gb82west12345698765432"),          # lower case
    ("US_SSN", "536-22-1234"),
    ("IP_ADDRESS", "192.168.10.24"),
    ("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
    ("CRYPTO", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
    ("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
    ("GITHUB_TOKEN", "ghp_" + "a1B2c3D4e5" * 3 + "a1B2c3"),
    ("SLACK_TOKEN", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("OPENAI_API_KEY", "sk-proj-" + "Ab3dEf6hIj" * 4),
    ("JWT", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
])
def test_recognizer_finds_the_whole_item(scanner, entity, value):
    assert (entity, value) in entities(scanner, f"here it is: {value} thanks")


def test_aws_secret_key_is_found_after_its_name(scanner):
    text = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert ("AWS_SECRET_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") in entities(scanner, text)


def test_private_key_blocks_terminated_or_not(scanner):
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx+ab/12\nQ0m==\n-----END RSA PRIVATE KEY-----"
    assert ("PRIVATE_KEY", block) in entities(scanner, f"key:\n{block}\nbye")
    truncated = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nBG5vbmUAAAAEbm9uZQ"
    found = entities(scanner, f"key: {truncated}")
    assert found and found[0][0] == "PRIVATE_KEY" and found[0][1].startswith("-----BEGIN OPENSSH")
    assert "BG5vbmUAAAAEbm9uZQ" in found[0][1]


@pytest.mark.parametrize("text, value", [
    ("call me at (212) 555-0123 tomorrow", "(212) 555-0123"),
    ("Phone: +44 7700 900123", "+44 7700 900123"),
    ("Desk: +1-903-140-4508x769", "+1-903-140-4508x769"),
    ("Mobile: 0490 39 07 81", "0490 39 07 81"),
    ("781 1704 office", "781 1704"),
])
def test_phone_numbers_in_national_and_international_formats(scanner, text, value):
    assert ("PHONE_NUMBER", value) in entities(scanner, text)


@pytest.mark.parametrize("text", [
    "The meeting is on 2024-05-17 at noon.",
    "We sold 1234 5678 units in 2023.",       # digit groups without a phone context word
    "Order 4111 1111 1111 1112 was shipped",  # fails the Luhn check: neither card nor phone
    "version 10.4.22.1 is out",
])
def test_numbers_that_are_not_pii(scanner, text):
    assert [e for e in entities(scanner, text) if e[0] in ("PHONE_NUMBER", "CREDIT_CARD")] == []


def test_ssn_shape_is_not_taken_for_a_phone(scanner):
    assert entities(scanner, "my number is 536-22-1234") == [("US_SSN", "536-22-1234")]


def test_email_wins_over_the_url_inside_it(scanner):
    assert entities(scanner, "write to ops@example.org") == [("EMAIL_ADDRESS", "ops@example.org")]


def test_email_validation_never_touches_the_network(scanner, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert OFFLINE_TLD.suffix_list_urls == ()
    assert entities(scanner, "mail bob@mail.example.com") == [("EMAIL_ADDRESS", "bob@mail.example.com")]
    assert OFFLINE_TLD("bob@foo.notarealtld").fqdn == ""


def test_context_words_lift_weak_matches(scanner):
    # A bare nine-digit number is only an SSN when the text says so.
    assert entities(scanner, "my ssn is 536221234") == [("US_SSN", "536221234")]
    assert entities(scanner, "order number 536221234 shipped") == []


def test_many_findings_in_one_text_stay_fast_and_complete(scanner):
    text = " ".join(f"user{i}@example.com" for i in range(3000))
    found = entities(scanner, text)
    assert len(found) == 3000 and {entity for entity, _ in found} == {"EMAIL_ADDRESS"}
