"""Modal's `fake_video_render`: the GPU side of the `hook` example. A generator that yields
one SSE event per processed chunk. It runs as its own StreamingFunction (gpu.count: 1), and
the CPU endpoint in hook/server.js streams from its Service URL.
"""

import os
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()
PAUSE = float(os.environ.get("RENDER_PAUSE", "1.0"))


def fake_video_render(chunks: int):
    for i in range(chunks):
        yield f"id: {i}\ndata: finished processing some data from GPU {i}\n\n".encode()
        time.sleep(PAUSE)


@app.api_route("/", methods=["GET", "POST"])
def render(chunks: int = 10):
    return StreamingResponse(fake_video_render(chunks), media_type="text/event-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
