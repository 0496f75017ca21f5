"""The v2 gRPC front door, on grpc.aio.

The service is ``inference.GRPCInferenceService``: KServe's ``grpc_predict_v2.proto`` with Triton's
extensions (``ModelStreamInfer``, ``ModelConfig``, ``ModelStatistics``) under the same package,
methods and field numbers. Its generated stubs are the ones ``tritonclient`` ships, so what
``tritonclient.grpc`` and ``perf_analyzer`` send is read by the very same message classes.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from . import v2
from .service import V2Service

add_servicer = pb_grpc.add_GRPCInferenceServiceServicer_to_server
T = TypeVar("T")

# The typed ``contents`` field that carries each datatype in the JSON-less form.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


def _parameter_values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    values = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind is not None else None
    return values


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def request_from_proto(message: pb.ModelInferRequest) -> v2.V2Request:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise v2.bad_request(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        data = None
        if not raw:
            contents = _CONTENTS_FIELD.get(tensor.datatype)
            data = list(getattr(tensor.contents, contents)) if contents else None
        inputs.append(v2.InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), raw[i] if raw else None, data))
    outputs = []
    for wanted in message.outputs:
        p = _parameter_values(wanted.parameters)
        classes = p.get("classification", 0)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise v2.bad_request(f"output {wanted.name!r}: classification must be a whole number >= 0; got {classes!r}")
        outputs.append(v2.RequestedOutput(wanted.name, True, classes))
    parameters = _parameter_values(message.parameters)
    parameters.pop("binary_data_output", None)  # gRPC answers in raw_output_contents anyway
    return v2.V2Request(
        message.model_name, message.model_version, message.id, tuple(inputs), tuple(outputs), parameters
    )


def response_to_proto(response: v2.V2Response) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        message.raw_output_contents.append(v2.tensor_bytes(tensor))
    return message


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, service: V2Service, token: str | None = None) -> None:
        self.service = service
        self.token = token

    async def _guard(self, context: grpc.aio.ServicerContext) -> None:
        if self.token is None:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given).encode(), f"Bearer {self.token}".encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "send metadata 'authorization: Bearer <token>'")

    async def _call(self, context: grpc.aio.ServicerContext, answer: Callable[[], Awaitable[T]]) -> T:
        """Check the caller, then run what answers the call; a ``V2Error`` ends it with the protocol's status."""
        await self._guard(context)
        try:
            return await answer()
        except v2.V2Error as error:
            await context.abort(grpc.StatusCode[error.grpc_code], error.message)
            raise  # abort raises; never reached

    async def _model(self, request: Any, context: grpc.aio.ServicerContext) -> v2.ModelInfo:
        return await self._call(context, lambda: self.service.model(request.name, request.version))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=await self.service.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.service.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        await self._guard(context)
        return json_format.ParseDict(v2.server_metadata(self.service.version), pb.ServerMetadataResponse())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        model = await self._model(request, context)
        return pb.ModelReadyResponse(ready=model.version_ready(request.version) if request.version else model.ready)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        model = await self._model(request, context)
        return json_format.ParseDict(v2.model_metadata(model, request.version), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        model = await self._model(request, context)
        return json_format.ParseDict({"config": v2.model_config(model)}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        document = await self._call(context, lambda: self.service.statistics(request.name, request.version))
        return json_format.ParseDict(document, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        response = await self._call(context, lambda: self.service.infer(request_from_proto(request)))
        return response_to_proto(response)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream runs as it arrives; each answer (or error) is sent as soon as it is
        ready, with its request's id, so answers may pass one another."""
        await self._guard(context)
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def run(message: pb.ModelInferRequest) -> None:
            try:
                answer = pb.ModelStreamInferResponse(
                    infer_response=response_to_proto(await self.service.infer(request_from_proto(message)))
                )
            except v2.V2Error as error:
                answer = pb.ModelStreamInferResponse(
                    error_message=error.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=message.model_name, model_version=message.model_version, id=message.id
                    ),
                )
            await answers.put(answer)

        async def read() -> None:
            async for message in requests:
                task = asyncio.create_task(run(message))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*list(running))
            await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)
