"""InferenceService: unary and streaming calls over the one pipeline (pipeline.py)."""

from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import Unavailable
from services.router.events import Delta, Final
from services.router.pipeline import Pipeline


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline

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
