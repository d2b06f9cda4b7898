"""MLServer's streaming text model on Sluice: the same word-by-word `TextModel`, served with
FastAPI on the V2 inference protocol, so MLServer's documented REST client works against it:

    POST /v2/models/text-model/generate_stream   SSE, one V2 InferenceResponse per word
    POST /v2/models/text-model/infer             the whole text at once (also the map path)
    GET  /v2/health/ready, /v2/models/text-model/ready

Each event's data is an InferenceResponse whose output `output` holds one word as BYTES with
content_type str, which is what `StringCodec.decode_output` reads.
"""

import asyncio
import json
import os
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

MODEL_NAME = "text-model"
MODEL_VERSION = "v1.2.3"
WORD_DELAY = float(os.environ.get("TEXT_MODEL_DELAY", "0.5"))

app = FastAPI()


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: Any
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestInput]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


def prompt_of(request: InferenceRequest) -> str:
    first = request.inputs[0]
    if first.datatype != "BYTES":
        raise HTTPException(400, detail=f"inputs[0].datatype must be BYTES, got {first.datatype}")
    data = first.data if isinstance(first.data, list) else [first.data]
    if not data or not isinstance(data[0], str):
        raise HTTPException(400, detail="inputs[0].data must hold one string")
    return data[0]


def split_words(text: str) -> list[str]:
    # As MLServer's TextModel: every word after the first keeps its leading space.
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def response(request_id: str, text: str) -> dict[str, Any]:
    return {
        "model_name": MODEL_NAME,
        "model_version": MODEL_VERSION,
        "id": request_id,
        "parameters": {},
        "outputs": [
            {
                "name": "output",
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"content_type": "str"},
                "data": [text],
            }
        ],
    }


@app.post(f"/v2/models/{MODEL_NAME}/generate_stream")
async def generate_stream(request: InferenceRequest):
    words = split_words(prompt_of(request))
    request_id = request.id or str(uuid.uuid4())

    async def events():
        for word in words:
            await asyncio.sleep(WORD_DELAY)
            yield f"data: {json.dumps(response(request_id, word))}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.post(f"/v2/models/{MODEL_NAME}/infer")
async def infer(request: InferenceRequest):
    return response(request.id or str(uuid.uuid4()), "".join(split_words(prompt_of(request))))


@app.get("/v2/health/ready")
@app.get(f"/v2/models/{MODEL_NAME}/ready")
async def ready():
    return {"ready": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
