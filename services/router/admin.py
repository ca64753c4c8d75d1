"""AdminService: rollouts and template versions, for operators (the edge requires the
`admin` scope). Every call, reads and refusals included, writes one audit record
naming the caller's key id, the target and the outcome."""

import asyncio
import hashlib
from typing import Awaitable, Callable

from google.protobuf.timestamp_pb2 import Timestamp
from llmsuite.admin.v1 import admin_pb2, admin_pb2_grpc

from services.common.context import key_id_var
from services.router.auditing import Auditing, status_name
from services.router.rollout import Rollouts
from services.router.templates import Template, Templates, Version
from services.router.variants import CANARY, ERROR_RATE, LATENCY, MANUAL, PROMOTED, ROLLED_BACK, STABLE, Rollout

_STATES = {STABLE: admin_pb2.ROLLOUT_STATE_STABLE, CANARY: admin_pb2.ROLLOUT_STATE_CANARY,
           PROMOTED: admin_pb2.ROLLOUT_STATE_PROMOTED, ROLLED_BACK: admin_pb2.ROLLOUT_STATE_ROLLED_BACK}
_REASONS = {ERROR_RATE: admin_pb2.ROLLBACK_REASON_ERROR_RATE, LATENCY: admin_pb2.ROLLBACK_REASON_LATENCY,
            MANUAL: admin_pb2.ROLLBACK_REASON_MANUAL}


def _time(iso: str) -> Timestamp | None:
    if not iso:
        return None
    stamp = Timestamp()
    stamp.FromJsonString(iso)
    return stamp


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def rollout_message(rollout: Rollout) -> admin_pb2.Rollout:
    message = admin_pb2.Rollout(
        alias=rollout.alias, baseline=rollout.baseline, state=_STATES[rollout.state], revision=rollout.revision,
        updated_by=rollout.updated_by, update_time=_time(rollout.updated_at),
        weights=[admin_pb2.VariantWeight(variant=name, weight=weight) for name, weight in rollout.weights])
    last = rollout.last_rollback
    if last is not None:
        message.last_rollback.CopyFrom(admin_pb2.RollbackRecord(
            reason=_REASONS.get(last.reason, admin_pb2.ROLLBACK_REASON_UNSPECIFIED), detail=last.detail,
            variant=last.variant, time=_time(last.time), actor=last.actor))
    return message


def template_message(template: Template) -> admin_pb2.Template:
    return admin_pb2.Template(name=template.name, active_version=template.active, versions=list(template.versions),
                              previous_versions=list(template.history), revision=template.revision,
                              update_time=_time(template.updated_at), updated_by=template.updated_by)


def version_message(name: str, version: Version) -> admin_pb2.TemplateVersion:
    return admin_pb2.TemplateVersion(name=name, version=version.template.version, system=version.template.system,
                                     digest=_digest(version.template.system), source=version.source,
                                     create_time=_time(version.created_at))


def _actor() -> str:
    # Direct calls (development, without the edge) carry no key id.
    return key_id_var.get() or "direct"


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, rollouts: Rollouts, templates: Templates, auditing: Auditing):
        self._rollouts = rollouts
        self._templates = templates
        self._auditing = auditing

    async def _audited(self, action: str, target: str, detail: dict, call: Callable[[], Awaitable]):
        """Runs the call and audits it, whatever its outcome."""
        try:
            response = await call()
        except (Exception, asyncio.CancelledError) as err:
            self._auditing.admin(action, target, status_name(err), detail)
            raise
        self._auditing.admin(action, target, "OK", detail)
        return response

    async def ListRollouts(self, request, context):
        async def call():
            rollouts = [rollout_message(self._rollouts.get(alias)) for alias in self._rollouts.aliases()]
            return admin_pb2.ListRolloutsResponse(rollouts=rollouts)
        return await self._audited("ListRollouts", "", {}, call)

    async def GetRollout(self, request, context):
        async def call():
            return admin_pb2.GetRolloutResponse(rollout=rollout_message(self._rollouts.get(request.alias)))
        return await self._audited("GetRollout", request.alias, {}, call)

    async def SetWeights(self, request, context):
        weights = [(item.variant, item.weight) for item in request.weights]

        async def call():
            rollout = await self._rollouts.set_weights(request.alias, weights, request.baseline, _actor())
            return admin_pb2.SetWeightsResponse(rollout=rollout_message(rollout))
        detail = {"weights": [list(pair) for pair in weights], "baseline": request.baseline}
        return await self._audited("SetWeights", request.alias, detail, call)

    async def Promote(self, request, context):
        async def call():
            rollout = await self._rollouts.promote(request.alias, request.variant, _actor())
            return admin_pb2.PromoteResponse(rollout=rollout_message(rollout))
        return await self._audited("Promote", request.alias, {"variant": request.variant}, call)

    async def Rollback(self, request, context):
        async def call():
            rollout = await self._rollouts.rollback(request.alias, request.note, _actor())
            return admin_pb2.RollbackResponse(rollout=rollout_message(rollout))
        return await self._audited("Rollback", request.alias, {"note": request.note[:500]}, call)

    async def ListTemplates(self, request, context):
        async def call():
            return admin_pb2.ListTemplatesResponse(
                templates=[template_message(template) for template in self._templates.all()])
        return await self._audited("ListTemplates", "", {}, call)

    async def GetTemplate(self, request, context):
        async def call():
            template = self._templates.get(request.name)
            version = self._templates.version(request.name, request.version)
            return admin_pb2.GetTemplateResponse(template=version_message(request.name, version),
                                                 active=version.template.version == template.active)
        return await self._audited("GetTemplate", request.name, {"version": request.version}, call)

    async def CreateTemplateVersion(self, request, context):
        async def call():
            version = await self._templates.create_version(request.name, request.version, request.system, _actor())
            return admin_pb2.CreateTemplateVersionResponse(template=version_message(request.name, version))
        # The text itself stays out of the audit log; its digest identifies it.
        detail = {"version": request.version, "digest": _digest(request.system)}
        return await self._audited("CreateTemplateVersion", request.name, detail, call)

    async def ActivateTemplate(self, request, context):
        async def call():
            template = await self._templates.activate(request.name, request.version, _actor())
            return admin_pb2.ActivateTemplateResponse(template=template_message(template))
        return await self._audited("ActivateTemplate", request.name, {"version": request.version}, call)

    async def RollbackTemplate(self, request, context):
        async def call():
            template = await self._templates.rollback(request.name, _actor())
            return admin_pb2.RollbackTemplateResponse(template=template_message(template))
        return await self._audited("RollbackTemplate", request.name, {}, call)
