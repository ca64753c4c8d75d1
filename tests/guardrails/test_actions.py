"""Redaction with numbered placeholders, masking, keyed hashing, restoring."""

from services.guardrails.actions import Finding, Placeholders, Redactor, mask, restore
from services.guardrails.config import Action

TEXT = "mail a@x.org or b@y.org, again a@x.org; card 4111-1111-1111-1111"


def test_placeholders_are_numbered_in_text_order_and_reused_for_equal_values():
    redactor = Redactor(b"k" * 32)
    findings = [Finding("EMAIL_ADDRESS", start, end, 1.0, Action.REDACT)
                for start, end in ((5, 12), (16, 23), (31, 38))]
    book = Placeholders()
    out = redactor.apply(TEXT, findings, "acme", book)
    assert out.startswith("mail <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_2>, again <EMAIL_ADDRESS_1>;")
    assert book.mapping == {"<EMAIL_ADDRESS_1>": "a@x.org", "<EMAIL_ADDRESS_2>": "b@y.org"}
    assert restore(out, book.mapping) == TEXT


def test_mask_keeps_separators_and_the_last_four():
    assert mask("4111-1111-1111-1234") == "****-****-****-1234"
    assert mask("abc") == "***"


def test_hash_is_stable_within_a_tenant_and_differs_across_tenants_and_keys():
    redactor = Redactor(b"k" * 32)
    first = redactor.hash_value("EMAIL_ADDRESS", "a@x.org", "acme")
    assert first == redactor.hash_value("EMAIL_ADDRESS", "a@x.org", "acme")
    assert first != redactor.hash_value("EMAIL_ADDRESS", "a@x.org", "globex")
    assert first != Redactor(b"j" * 32).hash_value("EMAIL_ADDRESS", "a@x.org", "acme")
    assert first.startswith("<EMAIL_ADDRESS#") and "a@x.org" not in first


def test_actions_mix_and_allow_leaves_text_alone():
    card_start = TEXT.index("4111")
    findings = [Finding("EMAIL_ADDRESS", 5, 12, 1.0, Action.ALLOW),
                Finding("EMAIL_ADDRESS", 16, 23, 1.0, Action.HASH),
                Finding("CREDIT_CARD", card_start, len(TEXT), 1.0, Action.MASK)]
    out = Redactor(b"k" * 32).apply(TEXT, findings, "acme", Placeholders())
    assert out.startswith("mail a@x.org or <EMAIL_ADDRESS#")
    assert out.endswith("card ****-****-****-1111")


def test_restore_ignores_placeholders_of_other_requests():
    assert restore("hi <EMAIL_ADDRESS_1> and <PHONE_NUMBER_9>", {"<EMAIL_ADDRESS_1>": "a@x.org"}) == \
        "hi a@x.org and <PHONE_NUMBER_9>"
