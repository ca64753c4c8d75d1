"""API keys and the authorisation decision, as pure functions."""

from datetime import datetime, timedelta, timezone

import grpc
import pytest
import yaml

from gateway.authz.config import DEFAULT_RULES, ScopeRule
from gateway.authz.decision import JwtClaims, decide, presented_key, required_scope
from gateway.keys import (
    ApiKey,
    KeysFileError,
    _main,
    add_key,
    ensure_dev_key,
    generate_key,
    hash_key,
    key_id_of,
    load_keys,
    parse_keys,
    revoke_key,
)

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
INFER = "/llmsuite.inference.v1.InferenceService/Generate"


def entry(key: str, **overrides) -> ApiKey:
    fields = {"id": key_id_of(key), "tenant": "acme", "scopes": ("inference",), "sha256": hash_key(key)}
    return ApiKey(**{**fields, **overrides})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_generated_keys_are_unique_and_carry_their_id():
    first, second = generate_key("ci-1"), generate_key("ci-1")
    assert first != second
    assert key_id_of(first) == "ci-1" and first.startswith("lsk_ci-1_")
    assert key_id_of("lsk_ci-1_short") is None and key_id_of("sk-abc") is None


def test_generate_key_rejects_an_id_that_would_break_parsing():
    with pytest.raises(ValueError, match="key id"):
        generate_key("has_underscore")


def test_the_keys_file_holds_only_the_hash(tmp_path):
    path = tmp_path / "keys.yaml"
    key = add_key(path, "svc", "acme", ["inference", "retrieval:read"], "batch jobs")
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    loaded = load_keys(path)["svc"]
    assert loaded.sha256 == hash_key(key) and loaded.scopes == ("inference", "retrieval:read")
    assert loaded.tenant == "acme" and not loaded.revoked


def test_adding_an_existing_id_is_refused(tmp_path):
    path = tmp_path / "keys.yaml"
    add_key(path, "svc", "acme", ["inference"])
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(path, "svc", "acme", ["inference"])


def test_revoke_marks_the_entry(tmp_path):
    path = tmp_path / "keys.yaml"
    add_key(path, "svc", "acme", ["inference"])
    revoke_key(path, "svc")
    assert load_keys(path)["svc"].revoked
    with pytest.raises(KeysFileError, match="no key with id 'gone'"):
        revoke_key(path, "gone")


def test_cli_new_prints_a_working_key(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    assert _main(["new", "--id", "dev", "--tenant", "default", "--scopes", "inference,admin", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    decision = decide(INFER, bearer(key), DEFAULT_RULES, load_keys(path), frozenset(), NOW)
    assert decision.allowed and decision.identity.tenant == "default"


def test_the_dev_key_is_created_once_and_replaced_when_revoked(tmp_path):
    keys_file, key_file = tmp_path / "keys.yaml", tmp_path / "dev-key"
    add_key(keys_file, "other", "acme", ["inference"])
    first = ensure_dev_key(keys_file, key_file)
    assert ensure_dev_key(keys_file, key_file) == first
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    keys = load_keys(keys_file)
    assert set(keys) == {"other", "dev"} and first not in keys_file.read_text()
    assert decide(INFER, bearer(first), DEFAULT_RULES, keys, frozenset(), NOW).allowed
    revoke_key(keys_file, "dev")
    second = ensure_dev_key(keys_file, key_file)
    assert second != first and not load_keys(keys_file)["dev"].revoked


@pytest.mark.parametrize("text, fragment", [
    ("keys: [", "not valid YAML"),
    ("keys:\n- id: a\n  tenant: t\n  scopes: [inference]\n  sha256: nothex\n", "keys.0.sha256"),
    ("keys:\n- {id: a, tenant: t, scopes: [Bad Scope], sha256: " + "0" * 64 + "}\n", "Bad Scope"),
    ("keys:\n- {id: a, tenant: t, scopes: [], sha256: " + "a" * 64 + "}\n"
     "- {id: a, tenant: t, scopes: [], sha256: " + "b" * 64 + "}\n", "appears twice"),
    ("keys:\n- {id: a, tenant: t, scopes: [], sha256: " + "0" * 64 + ", secret: x}\n", "secret"),
])
def test_bad_keys_files_name_the_problem(text, fragment):
    with pytest.raises(KeysFileError) as err:
        parse_keys(text, "keys.yaml")
    assert "keys.yaml" in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("path, scope", [
    ("/grpc.health.v1.Health/Check", ""),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", ""),
    (INFER, "inference"),
    ("/llmsuite.inference.v1.InferenceService/GenerateStream?x=1", "inference"),
    ("/llmsuite.inference.v1.InferenceService/GetUsage", "inference"),
    ("/llmsuite.inference.v1.InferenceService/SubmitBatch", "inference"),
    ("/llmsuite.inference.v1.InferenceService/DeleteSession", "inference"),
    ("/llmsuite.inference.v1.InferenceService/Feedback", "inference"),
    ("/llmsuite.retrieval.v1.RetrievalService/Search", "retrieval:read"),
    ("/llmsuite.retrieval.v1.RetrievalService/Upsert", "retrieval:write"),
    ("/llmsuite.generation.v1.GenerationService/Generate", "admin"),
    ("/llmsuite.admin.v1.AdminService/SetWeights", "admin"),
    ("/some.new.Service/Call", "admin"),
    ("/v1/chat/completions", "inference"),
    ("/v1/models", "inference"),
    ("/v1/models/llmsuite/light?x=1", "inference"),
    ("/v1/embeddings", "retrieval:read"),
    ("/v1/completions", "admin"),
    ("/v1/./embeddings", "admin"),
])
def test_default_scope_rules(path, scope):
    assert required_scope(path, DEFAULT_RULES) == scope


def test_presented_key_reads_both_headers():
    assert presented_key({"x-api-key": " k1 "}) == "k1"
    assert presented_key({"authorization": "bearer k2"}) == "k2"
    assert presented_key({}) is None


class TestDecide:
    key = generate_key("svc")

    def keys(self, **overrides):
        return {"svc": entry(self.key, **overrides)}

    def test_a_valid_key_yields_its_identity(self):
        decision = decide(INFER, bearer(self.key), DEFAULT_RULES, self.keys(), frozenset(), NOW)
        assert decision.allowed and decision.reason == "key"
        assert (decision.identity.tenant, decision.identity.key_id) == ("acme", "svc")

    def test_x_api_key_header_works_too(self):
        assert decide(INFER, {"x-api-key": self.key}, DEFAULT_RULES, self.keys(), frozenset(), NOW).allowed

    @pytest.mark.parametrize("headers, reason, fragment", [
        ({}, "missing", "missing API key"),
        ({"authorization": "Bearer nonsense"}, "malformed", "malformed"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "malformed", "malformed"),
        (bearer(generate_key("svc")), "invalid", "not valid"),
        (bearer(generate_key("other")), "invalid", "not valid"),
    ])
    def test_unauthenticated(self, headers, reason, fragment):
        decision = decide(INFER, headers, DEFAULT_RULES, self.keys(), frozenset(), NOW)
        assert decision.code == grpc.StatusCode.UNAUTHENTICATED and decision.reason == reason
        assert fragment in decision.message

    def test_unknown_id_and_wrong_secret_read_the_same(self):
        unknown = decide(INFER, bearer(generate_key("other")), DEFAULT_RULES, self.keys(), frozenset(), NOW)
        wrong = decide(INFER, bearer(generate_key("svc")), DEFAULT_RULES, self.keys(), frozenset(), NOW)
        assert unknown.message == wrong.message

    def test_revoked_in_the_file_or_in_the_shared_set(self):
        in_file = decide(INFER, bearer(self.key), DEFAULT_RULES, self.keys(revoked=True), frozenset(), NOW)
        shared = decide(INFER, bearer(self.key), DEFAULT_RULES, self.keys(), frozenset({"svc"}), NOW)
        for decision in (in_file, shared):
            assert decision.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in decision.message

    def test_expired(self):
        keys = self.keys(expires=NOW - timedelta(seconds=1))
        decision = decide(INFER, bearer(self.key), DEFAULT_RULES, keys, frozenset(), NOW)
        assert decision.code == grpc.StatusCode.UNAUTHENTICATED and "expired" in decision.message
        assert decide(INFER, bearer(self.key), DEFAULT_RULES, keys, frozenset(), NOW - timedelta(seconds=2)).allowed

    def test_wrong_scope_is_permission_denied_and_names_the_scope(self):
        decision = decide("/llmsuite.retrieval.v1.RetrievalService/Upsert", bearer(self.key), DEFAULT_RULES,
                          self.keys(), frozenset(), NOW)
        assert decision.code == grpc.StatusCode.PERMISSION_DENIED
        assert "retrieval:write" in decision.message and "'svc'" in decision.message

    def test_admin_satisfies_every_scope(self):
        decision = decide("/llmsuite.generation.v1.GenerationService/Generate", bearer(self.key), DEFAULT_RULES,
                          self.keys(scopes=("admin",)), frozenset(), NOW)
        assert decision.allowed

    def test_public_paths_need_no_key_and_ignore_bad_ones(self):
        for headers in ({}, {"authorization": "Bearer nonsense"}):
            decision = decide("/grpc.health.v1.Health/Check", headers, DEFAULT_RULES, {}, frozenset(), NOW)
            assert decision.allowed and decision.public

    def test_custom_rules_without_a_match_need_admin(self):
        rules = (ScopeRule(path="/only/this", scope="inference"),)
        decision = decide(INFER, bearer(self.key), rules, self.keys(), frozenset(), NOW)
        assert decision.code == grpc.StatusCode.PERMISSION_DENIED and "'admin'" in decision.message


class TestJwt:
    def claims(self, **payload):
        return JwtClaims("tenant", "scope", payload)

    def test_verified_claims_give_the_identity(self):
        decision = decide(INFER, {}, DEFAULT_RULES, {}, frozenset(),
                          NOW, self.claims(sub="billing", tenant="acme", scope="inference retrieval:read"))
        assert decision.allowed and decision.identity.key_id == "jwt:billing"
        assert decision.identity.scopes == ("inference", "retrieval:read")

    def test_scope_list_claim(self):
        decision = decide(INFER, {}, DEFAULT_RULES, {}, frozenset(),
                          NOW, self.claims(sub="b", tenant="acme", scope=["inference"]))
        assert decision.allowed

    @pytest.mark.parametrize("payload, fragment", [
        ({"tenant": "acme", "scope": "inference"}, "'sub'"),
        ({"sub": "b", "scope": "inference"}, "'tenant'"),
    ])
    def test_missing_claims(self, payload, fragment):
        decision = decide(INFER, {}, DEFAULT_RULES, {}, frozenset(), NOW, self.claims(**payload))
        assert decision.code == grpc.StatusCode.UNAUTHENTICATED and fragment in decision.message

    def test_jwt_scope_and_revocation(self):
        scoped = decide("/llmsuite.retrieval.v1.RetrievalService/Upsert", {}, DEFAULT_RULES, {}, frozenset(), NOW,
                        self.claims(sub="b", tenant="acme", scope="inference"))
        assert scoped.code == grpc.StatusCode.PERMISSION_DENIED and "JWT subject 'b'" in scoped.message
        revoked = decide(INFER, {}, DEFAULT_RULES, {}, frozenset({"jwt:b"}), NOW,
                         self.claims(sub="b", tenant="acme", scope="inference"))
        assert revoked.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in revoked.message


def test_keys_file_example_in_docs_parses():
    from tests.harness import REPO

    text = (REPO / "docs" / "gateway.md").read_text()
    block = text.split("```yaml\n# keys file\n", 1)[1].split("```", 1)[0]
    keys = parse_keys(block, "docs/gateway.md")
    assert keys and all(isinstance(k, ApiKey) for k in keys.values())
    assert yaml.safe_load(block)["keys"][0]["sha256"]
