"""MLServer's documented REST streaming client (httpx + httpx_sse), pointed at Sluice.
MLServer's own version parses each event with `types.InferenceResponse.parse_raw` and
`StringCodec.decode_output`; this one reads the same V2 JSON without the mlserver package.

    python3 text-model/client.py http://127.0.0.1:8080
"""

import json
import sys
from pathlib import Path

import httpx
from httpx_sse import connect_sse

base = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://localhost:8080"
inference_request = json.loads((Path(__file__).parent / "generate-request.json").read_text())

with httpx.Client(timeout=60) as client:
    with connect_sse(
        client, "POST", f"{base}/v2/models/text-model/generate_stream", json=inference_request
    ) as event_source:
        for sse in event_source.iter_sse():
            response = json.loads(sse.data)
            output = response["outputs"][0]
            assert output["datatype"] == "BYTES" and output["parameters"]["content_type"] == "str"
            print(output["data"][0], flush=True)
