"""Modal's `stream_me` example on Sluice: a FastAPI generator that yields ten SSE events with
pauses. `curl --no-buffer` shows them appear one by one, through the sidecar and any ingress.

    PORT=9000 python3 stream-me/server.py      # or: sluice serve examples/stream-me.yaml
"""

import os
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()
PAUSE = float(os.environ.get("STREAM_ME_PAUSE", "0.5"))


def fake_event_streamer(count: int):
    for i in range(count):
        yield f"data: some data {i}\n\n".encode()
        time.sleep(PAUSE)


@app.get("/")
def stream_me(count: int = 10):
    # A sync generator runs on Starlette's thread pool, so the pause does not block other requests.
    return StreamingResponse(fake_event_streamer(count), media_type="text/event-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
