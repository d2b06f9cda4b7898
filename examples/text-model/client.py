"""MLServer's documented REST streaming client (httpx + httpx-sse), pointed at Sluice.

    python3 text-model/client.py http://127.0.0.1:8080
"""

import sys
from pathlib import Path

import httpx
from httpx_sse import connect_sse
from mlserver import types
from mlserver.codecs import StringCodec

base = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://localhost:8080"
inference_request = types.InferenceRequest.model_validate_json(
    (Path(__file__).parent / "generate-request.json").read_text()
)

with httpx.Client(timeout=60) as client:
    with connect_sse(
        client,
        "POST",
        f"{base}/v2/models/text-model/generate_stream",
        json=inference_request.model_dump(exclude_none=True),
    ) as event_source:
        for sse in event_source.iter_sse():
            response = types.InferenceResponse.model_validate_json(sse.data)
            print(StringCodec.decode_output(response.outputs[0])[0], flush=True)
