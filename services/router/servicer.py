"""InferenceService: unary and streaming calls over the one pipeline (pipeline.py)."""

from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import Unavailable
from services.router.pipeline import Pipeline


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline

    async def Generate(self, request, context):
        async for event in self._pipeline.run(request, context.time_remaining(), streaming=False):
            if isinstance(event, inference_pb2.GenerateResponse):
                return event
        raise Unavailable("no answer was produced", retry_after_s=1.0)

    async def GenerateStream(self, request, context):
        async for event in self._pipeline.run(request, context.time_remaining(), streaming=True):
            if isinstance(event, inference_pb2.GenerateResponse):
                yield inference_pb2.GenerateStreamResponse(final=event)
            else:
                yield inference_pb2.GenerateStreamResponse(text_delta=event)
