"""Modal's `hook` example (`fake_video_render.remote_gen()`): a CPU endpoint that streams from a
GPU function through that function's Service URL with the Sluice Python client
(`sluice.stream_async`). Each event the GPU function makes is passed on as soon as it arrives,
without blocking the event loop; a client that leaves closes the upstream stream, so the GPU
stops working for nobody.

    RENDER_URL=http://127.0.0.1:8081/ PORT=9000 python3 hook/server.py
    # or: RENDER_URL=http://127.0.0.1:8081/ sluice serve examples/hook.yaml
"""

import json
import os
from collections.abc import AsyncIterator

import httpx
import sluice
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

# In a cluster: the GPU function's Service. `sluice serve` users point it at a local serve.
RENDER_URL = os.environ.get("RENDER_URL", "http://fake-video-render.default.svc/")
app = FastAPI()


def sse_data(text: str) -> str:
    return "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"


@app.get("/")
async def hook(chunks: int = 10) -> Response:
    events = sluice.stream_async(httpx.URL(RENDER_URL).copy_set_param("chunks", str(chunks)))
    try:
        first = await anext(events)  # headers only once the GPU function answered
    except sluice.SluiceError as err:
        await events.aclose()
        print(f"render stream failed: {err.code} {err}", flush=True)
        return JSONResponse(
            {"error": {"code": "render_failed", "message": str(err)}}, status_code=502
        )
    except StopAsyncIteration:
        first = None

    async def relay() -> AsyncIterator[str]:
        # Leaving this generator (the client went away, or the stream ended) closes `events`,
        # and with it the connection to the GPU function.
        async with events:
            try:
                if first is not None:
                    yield sse_data(first.raw)
                async for event in events:
                    yield sse_data(event.raw)
            except sluice.SluiceError as err:
                print(f"render stream failed: {err.code} {err}", flush=True)
                yield f"event: error\ndata: {json.dumps({'message': str(err)})}\n\n"

    return StreamingResponse(
        relay(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


if __name__ == "__main__":
    print(
        f"hook listening on :{os.environ.get('PORT', '9000')}, rendering through {RENDER_URL}",
        flush=True,
    )
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
