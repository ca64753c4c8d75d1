"""InferenceService: unary and streaming calls over the one pipeline (pipeline.py), and the
tenant-facing operations beside it: usage, batch jobs, sessions and feedback."""

from dataclasses import dataclass

from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import Unavailable
from services.router.batches import Batches
from services.router.events import Delta, Final
from services.router.feedback import Feedback
from services.router.pipeline import Pipeline
from services.router.session_api import SessionApi
from services.router.usage import Usage


@dataclass(frozen=True)
class Operations:
    """What the RPCs beside Generate are answered by."""

    usage: Usage
    batches: Batches
    sessions: SessionApi
    feedback: Feedback


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: Pipeline, operations: Operations):
        self._pipeline = pipeline
        self._ops = operations

    async def Generate(self, request, context):
        async for event in self._pipeline.run(request, context.time_remaining(), streaming=False):
            match event:
                case Final(response=response):
                    return response
        raise Unavailable("no answer was produced", retry_after_s=1.0)

    async def GenerateStream(self, request, context):
        async for event in self._pipeline.run(request, context.time_remaining(), streaming=True):
            match event:
                case Delta(text=text):
                    yield inference_pb2.GenerateStreamResponse(text_delta=text)
                case Final(response=response):
                    yield inference_pb2.GenerateStreamResponse(final=response)

    async def GetUsage(self, request, context):
        return await self._ops.usage.report(request)

    async def SubmitBatch(self, request, context):
        return await self._ops.batches.submit(request)

    async def GetJob(self, request, context):
        return await self._ops.batches.get(request)

    async def CancelJob(self, request, context):
        return await self._ops.batches.cancel(request)

    async def GetSession(self, request, context):
        return await self._ops.sessions.get(request)

    async def DeleteSession(self, request, context):
        return await self._ops.sessions.delete(request)

    async def ListSessions(self, request, context):
        return await self._ops.sessions.list(request)

    async def Feedback(self, request, context):
        return await self._ops.feedback.submit(request)
