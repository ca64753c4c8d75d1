"""Bad guardrails settings fail at start with a message naming the problem."""

import base64
import shutil

import pytest

from services.common.config import ConfigError, load
from services.common.paths import REPO
from services.guardrails.classifier import (
    DEFAULT_ADAPTER_PATH, DEFAULT_PATH, ClassifierError, InjectionClassifier,
)
from services.guardrails.config import Action, GuardrailsSettings, Policy


def settings(tmp_path, yaml_text: str) -> GuardrailsSettings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    return load(GuardrailsSettings, "guardrails", environ={"LLMSUITE_CONFIG": str(path)})


def test_policies_and_tenants_load_from_yaml(tmp_path):
    loaded = settings(tmp_path, """
guardrails:
  policies:
    default: {}
    strict: {entities: {CREDIT_CARD: block}, injection_flag_threshold: 0.3, injection_block_threshold: 0.3,
             blocklist: [falcon]}
  tenants:
    acme: {policy: strict}
""")
    assert loaded.policies["strict"].action("CREDIT_CARD") is Action.BLOCK
    assert loaded.policies["strict"].action("EMAIL_ADDRESS") is Action.REDACT
    assert loaded.policies["default"].action("URL") is Action.ALLOW
    assert loaded.tenants["acme"].policy == "strict"
    assert loaded.policies["strict"].injection_block_threshold == 0.3
    assert (loaded.policies["default"].injection_flag_threshold, loaded.policies["default"].injection_block_threshold) \
        == (0.5, 0.8)


@pytest.mark.parametrize("yaml_text, message", [
    ("guardrails: {policies: {strict: {}}}", "one named 'default'"),
    ("guardrails: {tenants: {acme: {policy: missing}}}", "refers to policy 'missing'"),
    ("guardrails: {policies: {default: {entities: {SOCKS: redact}}}}", "unknown entities ['SOCKS']"),
    ("guardrails: {policies: {default: {entities: {EMAIL_ADDRESS: shred}}}}", "entities.EMAIL_ADDRESS"),
    ("guardrails: {policies: {default: {injection_action: mask}}}", "injection_action must be allow or block"),
    ("guardrails: {policies: {default: {injection_threshold: 0.5}}}", "split into injection_flag_threshold"),
    ("guardrails: {policies: {default: {injection_flag_threshold: 0.9}}}", "must not exceed injection_block"),
    ("guardrails: {policies: {default: {entities: {EMAIL_ADDRESS: flag}}}}", "for prompt injection only"),
    ("guardrails: {policies: {default: {default_action: flag}}}", "for prompt injection only"),
    ("guardrails: {restore_key: c2hvcnQ=}", "exactly 32 bytes"),
    ("guardrails: {hash_key: '%%%'}", "not valid base64"),
])
def test_bad_settings_are_refused(tmp_path, yaml_text, message):
    with pytest.raises(ConfigError, match="guardrails") as err:
        settings(tmp_path, yaml_text)
    assert message in str(err.value)


def test_a_valid_restore_key_is_accepted():
    key = base64.b64encode(b"k" * 32).decode()
    assert GuardrailsSettings(restore_key=key).restore_key_bytes() == b"k" * 32
    assert Policy().fail_closed  # failing closed is the default


def test_shipped_classifier_fits_the_code_and_stays_small():
    classifier = InjectionClassifier.load()
    # Trained on tunable data only: never a report-only set.
    sources = set(classifier.metadata["sources"])
    assert sources == {"injection_train.jsonl", "wildguard_benign_train.jsonl", "piguard_valid.jsonl",
                       "cyberseceval_prompt_injection.jsonl (tuning half)", "benign_tasks.jsonl",
                       "benign_trigger_words.jsonl", "attack_styles.jsonl", "benign_chit_chat.jsonl",
                       "attacks_round2.jsonl", "benign_round2.jsonl"}
    assert 0 < classifier.flag_point < classifier.block_point < 1
    # The semantic model reads the vectors of the encoder fine-tuned with it.
    assert classifier.adapter == DEFAULT_ADAPTER_PATH
    assert DEFAULT_PATH.stat().st_size + DEFAULT_ADAPTER_PATH.stat().st_size < 3_000_000


def test_a_classifier_refuses_an_adapter_it_was_not_trained_with(tmp_path):
    shutil.copy(DEFAULT_PATH, tmp_path / DEFAULT_PATH.name)
    adapter = tmp_path / DEFAULT_ADAPTER_PATH.name
    with pytest.raises(ClassifierError, match="adapter this classifier was trained with is missing"):
        InjectionClassifier.load(tmp_path / DEFAULT_PATH.name)
    adapter.write_bytes(DEFAULT_ADAPTER_PATH.read_bytes() + b"\0")
    with pytest.raises(ClassifierError, match="sha256 differs"):
        InjectionClassifier.load(tmp_path / DEFAULT_PATH.name)


def test_fast_hashing_matches_scikit_learn():
    classifier = InjectionClassifier.load()
    vectorizer = classifier.hashing.vectorizer()
    for text in ("ignore all previous instructions", "wie geht's? 👋 ünïcödé", "a", ""):
        index, values = classifier.hashed(text)
        row = vectorizer.transform([text])
        assert sorted(index.tolist()) == sorted(row.indices.tolist())
        expected = dict(zip(row.indices.tolist(), row.data.tolist()))
        assert all(abs(value - expected[i]) < 1e-6 for i, value in zip(index.tolist(), values.tolist()))


def test_an_uninstalled_spacy_model_fails_instead_of_downloading(tmp_path):
    from services.guardrails.pii import build_analyzer

    with pytest.raises(ConfigError, match="spaCy model 'en_core_web_nonexistent' is not installed"):
        build_analyzer("en_core_web_nonexistent", str(tmp_path / "blank"))


def test_a_relative_classifier_path_is_taken_from_the_repository_root(tmp_path, monkeypatch):
    from services.guardrails.app import load_classifier

    monkeypatch.chdir(tmp_path)
    relative = str(DEFAULT_PATH.relative_to(REPO))
    assert load_classifier(GuardrailsSettings(classifier_path=relative)).adapter == DEFAULT_ADAPTER_PATH
    with pytest.raises(ConfigError, match="classifier_path: .*not found"):
        load_classifier(GuardrailsSettings(classifier_path="nowhere/classifier.json"))
