"""Restore tokens open only for the same request, tenant and key, and expire."""

import time

import pytest

from services.guardrails.vault import RestoreTokenError, RestoreVault

MAPPING = {"<EMAIL_ADDRESS_1>": "a@x.org"}


def test_round_trip_for_the_same_request_and_tenant():
    vault = RestoreVault(b"k" * 32, ttl_s=60)
    token = vault.seal(MAPPING, "req-1", "acme")
    assert b"a@x.org" not in token
    assert vault.open(token, "req-1", "acme") == MAPPING


@pytest.mark.parametrize("request_id, tenant", [("req-2", "acme"), ("req-1", "globex")])
def test_other_requests_and_tenants_cannot_open_it(request_id, tenant):
    vault = RestoreVault(b"k" * 32, ttl_s=60)
    with pytest.raises(RestoreTokenError, match="does not belong to this request"):
        vault.open(vault.seal(MAPPING, "req-1", "acme"), request_id, tenant)


def test_another_key_cannot_open_it_and_random_keys_differ_per_process():
    token = RestoreVault(b"k" * 32, ttl_s=60).seal(MAPPING, "r", "t")
    with pytest.raises(RestoreTokenError):
        RestoreVault(b"j" * 32, ttl_s=60).open(token, "r", "t")
    with pytest.raises(RestoreTokenError):
        RestoreVault(None, ttl_s=60).open(RestoreVault(None, ttl_s=60).seal(MAPPING, "r", "t"), "r", "t")


def test_tampered_truncated_and_expired_tokens_are_refused(monkeypatch):
    vault = RestoreVault(b"k" * 32, ttl_s=60)
    token = bytearray(vault.seal(MAPPING, "r", "t"))
    token[-1] ^= 1
    with pytest.raises(RestoreTokenError):
        vault.open(bytes(token), "r", "t")
    with pytest.raises(RestoreTokenError, match="not a token"):
        vault.open(b"\x01abc", "r", "t")
    sealed = vault.seal(MAPPING, "r", "t")
    monkeypatch.setattr(time, "time", lambda: 10**12)
    with pytest.raises(RestoreTokenError, match="expired"):
        vault.open(sealed, "r", "t")
