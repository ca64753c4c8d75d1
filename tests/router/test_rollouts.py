"""Rollouts, template versions and the audit log with real processes: two router replicas
on a real Redis, the automatic rollback on real Triton (the stand-ins' full@1 and full@2),
and a router stopped with SIGTERM."""

import json
import signal
import sys
import threading

import grpc
import pytest
from llmsuite.admin.v1 import admin_pb2 as apb, admin_pb2_grpc
from llmsuite.inference.v1 import inference_pb2 as pb

from services.audit.chain import verify
from services.audit.log import chain_files
from services.router.config import PromptTemplate
from services.router.validation import Turn
from services.router.variants import Rollout, assign
from tests.harness import REPO, poll
from tests.router.support import ask, ask_stream, model_prompt, start_router

sys.path.insert(0, str(REPO / "models" / "cpu"))
from standin.text import fails_on_purpose  # noqa: E402

pytestmark = pytest.mark.integration

FULL = pb.TIER_FULL
BYPASS = pb.CACHE_POLICY_BYPASS


def admin(router) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{router.port}"))


def weights(**shares: int) -> list[apb.VariantWeight]:
    return [apb.VariantWeight(variant=name.replace("_", "@"), weight=weight) for name, weight in shares.items()]


def answerable_request_id(question: str) -> str:
    """A request id whose prompt full@2 does not fail on purpose (the canary is in the prompt)."""
    return next(f"rid-ok-{n}" for n in range(100) if not fails_on_purpose(
        model_prompt(PromptTemplate(), [Turn("user", question)], f"rid-ok-{n}"), 4))


def as_rollout(message: apb.Rollout) -> Rollout:
    return Rollout(alias=message.alias, baseline=message.baseline,
                   weights=tuple((w.variant, w.weight) for w in message.weights))


@pytest.fixture(scope="module")
def replicas(log_dir, generation_port, redis_url):
    """Two routers sharing a Redis database of their own (the other Redis tests use db 0)."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    config = {"templates": {"default": {}, "garden": {"version": "3", "system": "You answer gardening questions."}},
              "tenants": {"default": {}, "acme": {"template": "garden"}}}
    started = []
    try:
        for name in ("router-state-a", "router-state-b"):
            started.append(start_router(log_dir, name, config, {"generation_url": f"127.0.0.1:{generation_port}"},
                                        env={"REDIS_URL": url}))
        yield started
    finally:
        for router in started:
            router.process.stop()


def test_weights_set_on_one_replica_are_served_by_the_other_within_a_second(replicas):
    a, b = replicas
    assert admin(b).GetRollout(apb.GetRolloutRequest(alias="full")).rollout.state == apb.ROLLOUT_STATE_STABLE
    changed = admin(a).SetWeights(apb.SetWeightsRequest(alias="full", weights=weights(full=50, full_2=50))).rollout
    seen = poll(lambda: (lambda r: r if r.revision == changed.revision else None)(
        admin(b).GetRollout(apb.GetRolloutRequest(alias="full")).rollout), "replica b sees the weights", timeout=1.0)
    assert seen.state == apb.ROLLOUT_STATE_CANARY and [(w.variant, w.weight) for w in seen.weights] == \
        [("full", 50), ("full@2", 50)]
    rollout = as_rollout(seen)
    for variant in ("full", "full@2"):
        user = next(f"u{n}" for n in range(100) if assign(rollout, "default", f"u{n}") == variant)
        for replica in (a, b):
            reply = ask(replica.stub(), "Explain why the sky is blue.", tier=FULL, user=user, cache_policy=BYPASS,
                        request_id=answerable_request_id("Explain why the sky is blue."),
                        sampling=pb.SamplingParams(max_tokens=4))
            assert reply.model_variant == variant and reply.model == "full"
    back = admin(b).Rollback(apb.RollbackRequest(alias="full", note="replica test")).rollout
    seen = poll(lambda: (lambda r: r if r.revision == back.revision else None)(
        admin(a).GetRollout(apb.GetRolloutRequest(alias="full")).rollout), "replica a sees the rollback", timeout=1.0)
    assert seen.state == apb.ROLLOUT_STATE_ROLLED_BACK and seen.last_rollback.detail == "replica test"
    assert seen.last_rollback.reason == apb.ROLLBACK_REASON_MANUAL


def test_a_template_version_activated_on_one_replica_is_used_by_the_other_within_a_second(replicas):
    a, b = replicas
    before = ask(b.stub(), "Which roses suit a balcony?", tenant="acme", cache_policy=BYPASS)
    assert before.template_version == "3"
    admin(a).CreateTemplateVersion(apb.CreateTemplateVersionRequest(name="garden", version="4",
                                                                    system="You answer gardening questions briefly."))
    activated = admin(a).ActivateTemplate(apb.ActivateTemplateRequest(name="garden", version="4")).template
    assert activated.active_version == "4" and activated.previous_versions == ["3"]
    poll(lambda: ask(b.stub(), "Which roses suit a balcony?", tenant="acme",
                     cache_policy=BYPASS).template_version == "4", "replica b uses version 4", timeout=1.0)
    listed = {t.name: t for t in admin(b).ListTemplates(apb.ListTemplatesRequest()).templates}
    assert listed["garden"].versions == ["3", "4"]
    version = admin(b).GetTemplate(apb.GetTemplateRequest(name="garden")).template
    assert (version.version, version.source, version.system) == ("4", "admin", "You answer gardening questions briefly.")
    admin(b).RollbackTemplate(apb.RollbackTemplateRequest(name="garden"))
    poll(lambda: ask(a.stub(), "Which roses suit a balcony?", tenant="acme",
                     cache_policy=BYPASS).template_version == "3", "replica a is back on version 3", timeout=1.0)


# The automatic rollback on real Triton. The policy is the same for both routers; the
# degraded canary (full@2: three times slower per token, one prompt in four failing)
# must go, a canary serving the baseline's own version (full is full@1) must stay.
POLICY = {"min_samples": 10, "window_s": 600, "error_rate_margin": 0.1, "latency_margin": 1.0,
          "min_latency_increase_s": 0.1}


@pytest.fixture(scope="module")
def canaries(log_dir, generation_port):
    routers = {}
    try:
        for name, canary in (("degraded", "full@2"), ("healthy", "full")):
            config = {"rollouts": {"full": {"baseline": "full@1", "weights": {"full@1": 50, canary: 50}}},
                      "auto_rollback": POLICY}
            routers[name] = start_router(log_dir, f"router-canary-{name}", config,
                                         {"generation_url": f"127.0.0.1:{generation_port}"})
        yield routers
    finally:
        for router in routers.values():
            router.process.stop()


def test_the_degraded_canary_is_rolled_back_by_itself_and_the_healthy_one_is_not(canaries):
    degraded, healthy = canaries["degraded"], canaries["healthy"]
    rolled_back_after = None
    for n in range(80):
        for router in (degraded, healthy):
            reply = ask(router.stub(), f"Explain step by step how canaries work, part {n}.", tier=FULL,
                        user=f"user-{n}", cache_policy=BYPASS, sampling=pb.SamplingParams(max_tokens=32))
            assert reply.text
        state = admin(degraded).GetRollout(apb.GetRolloutRequest(alias="full")).rollout.state
        if rolled_back_after is None and state == apb.ROLLOUT_STATE_ROLLED_BACK:
            rolled_back_after = n + 1
        if rolled_back_after is not None and n + 1 >= max(rolled_back_after, 40):
            break
    assert rolled_back_after is not None, "the degraded canary kept its traffic"
    rollout = admin(degraded).GetRollout(apb.GetRolloutRequest(alias="full")).rollout
    assert [(w.variant, w.weight) for w in rollout.weights] == [("full@1", 100), ("full@2", 0)]
    last = rollout.last_rollback
    assert last.reason in (apb.ROLLBACK_REASON_ERROR_RATE, apb.ROLLBACK_REASON_LATENCY)
    assert last.actor == "automatic" and last.variant == "full@2" and "baseline" in last.detail
    assert degraded.metric("llmsuite_router_rollbacks_total", alias="full") == 1
    assert degraded.metric("llmsuite_router_variant_weight", alias="full", variant="full@2") == 0
    assert degraded.metric("llmsuite_router_variant_requests_total", alias="full", variant="full@2",
                           outcome="error") >= 1
    assert "automatic rollback of full" in degraded.process.log_path.read_text()
    # After the rollback every user is on the baseline.
    for n in range(5):
        reply = ask(degraded.stub(), f"Explain step by step how canaries work, again {n}.", tier=FULL,
                    user=f"user-{n}", cache_policy=BYPASS, sampling=pb.SamplingParams(max_tokens=4))
        assert reply.model_variant == "full@1"

    kept = admin(healthy).GetRollout(apb.GetRolloutRequest(alias="full")).rollout
    assert kept.state == apb.ROLLOUT_STATE_CANARY and not kept.HasField("last_rollback")
    for variant in ("full@1", "full"):
        assert healthy.metric("llmsuite_router_variant_requests_total", alias="full", variant=variant,
                              outcome="ok") >= POLICY["min_samples"], "the healthy canary was never compared"
    assert healthy.metric("llmsuite_router_rollbacks_total", alias="full") == 0


def test_a_sigterm_leaves_every_answered_requests_record_in_the_audit_log(log_dir, generation_port, tmp_path):
    audit_dir = tmp_path / "audit"
    router = start_router(log_dir, "router-audit", {}, {"generation_url": f"127.0.0.1:{generation_port}",
                                                        "audit_dir": audit_dir, "audit_hmac_key": "test-key"})
    answered: list[str] = []
    started = threading.Barrier(9)

    def stream(n: int) -> None:
        request_id = f"rid-sigterm-{n}"
        call = ask_stream(router.stub(), f"Tell a long story about audit logs, part {n}.", tier=FULL,
                          request_id=request_id, cache_policy=BYPASS, sampling=pb.SamplingParams(max_tokens=150))
        try:
            first = True
            for message in call:
                if first:
                    first = False
                    started.wait(30)
                if message.HasField("final"):
                    answered.append(request_id)
        except grpc.RpcError:
            pass

    try:
        threads = [threading.Thread(target=stream, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        started.wait(30)  # every stream has its first text
        router.process.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert router.process.proc.wait(30) == 0
    finally:
        router.process.stop()
    assert len(answered) == 8, "in-flight streams should finish within the grace period"
    files = chain_files(audit_dir)
    result = verify(files)
    assert result.ok, result.problem
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    written = {record["request_id"]: record for record in records if record["kind"] == "request"}
    for request_id in answered:
        assert written[request_id]["outcome"] == "OK" and len(written[request_id]["answer_hmac"]) == 64
