"""MLServer's documented gRPC streaming client (GRPCInferenceServiceStub.ModelStreamInfer),
pointed at Sluice. Prints each word as it arrives, then the call's status code.

    python3 text-model/grpc_client.py 127.0.0.1:8080
    python3 text-model/grpc_client.py 127.0.0.1:80 text-model-grpc.local   # an ingress by host
"""

import asyncio
import sys
from pathlib import Path

import grpc
import mlserver.grpc.converters as converters
import mlserver.grpc.dataplane_pb2_grpc as dataplane
import mlserver.types as types
from mlserver.codecs import StringCodec
from mlserver.grpc.converters import ModelInferResponseConverter

target = sys.argv[1] if len(sys.argv) > 1 else "localhost:8081"
# The host an ingress routes on (gRPC calls go to /<service>/<method>, so it routes by host).
authority = sys.argv[2] if len(sys.argv) > 2 else None
inference_request = types.InferenceRequest.model_validate_json(
    (Path(__file__).parent / "generate-request.json").read_text()
)

# need to convert from string to bytes for grpc
inference_request.inputs[0] = StringCodec.encode_input("prompt", inference_request.inputs[0].data.root)
inference_request_g = converters.ModelInferRequestConverter.from_types(
    inference_request, model_name="text-model", model_version=None
)


async def get_inference_request_stream(inference_request):
    yield inference_request


async def main() -> None:
    options = [("grpc.default_authority", authority)] if authority else None
    async with grpc.aio.insecure_channel(target, options=options) as grpc_channel:
        grpc_stub = dataplane.GRPCInferenceServiceStub(grpc_channel)
        inference_request_stream = get_inference_request_stream(inference_request_g)
        call = grpc_stub.ModelStreamInfer(inference_request_stream)
        async for response in call:
            response = ModelInferResponseConverter.to_types(response)
            print(StringCodec.decode_output(response.outputs[0])[0], flush=True)
        print(f"status {(await call.code()).name}", flush=True)


asyncio.run(main())
