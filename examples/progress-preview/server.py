"""fal's streaming pattern on Sluice: a long job that streams progress events every few steps
and throttled base64 JPEG previews, then the final image. It runs as one process, or under
torchrun as a group (the multi-gpu example): rank 0 serves HTTP and streams, the other ranks
join through torch.distributed, each computes a band of every image, and rank 0 gathers them.

    POST /stream {"prompt": "a sunset", "steps": 20}
      -> data: {"step", "progress", "message"}            every `progress_every` steps
         data: {"step", "preview": "data:image/jpeg;base64,...", "num_gpus"}
                                                            every `preview_every` steps, at most
                                                            one per PREVIEW_MIN_INTERVAL seconds
         event: done / data: {"output": "data:image/jpeg;base64,...", "steps", "num_gpus"}

    PORT=9000 python3 progress-preview/server.py
    PORT=9000 torchrun --standalone --nproc_per_node=2 progress-preview/server.py
"""

import asyncio
import base64
import io
import json
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from PIL import Image
from pydantic import BaseModel, Field

SIZE = 64
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.1"))
PREVIEW_MIN_INTERVAL = float(os.environ.get("PREVIEW_MIN_INTERVAL", "0.5"))

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    # nccl between GPUs; gloo lets the same group run on CPU (tests, laptops).
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)
band = SIZE // world  # rows of each image this rank computes


class StreamRequest(BaseModel):
    prompt: str = Field(default="a sunset", max_length=1000)
    steps: int = Field(default=20, ge=1, le=1000)
    progress_every: int = Field(default=2, ge=1)
    preview_every: int = Field(default=5, ge=1)


def target_band(prompt: str) -> torch.Tensor:
    """This rank's rows of the image the prompt 'describes': colours and rings from its hash."""
    seed = zlib.crc32(prompt.encode())
    colour = torch.tensor([(seed >> s) & 0xFF for s in (0, 8, 16)], dtype=torch.float32, device=device) / 255
    ys = torch.arange(rank * band, (rank + 1) * band, device=device, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(SIZE, device=device, dtype=torch.float32).view(1, -1)
    rings = torch.sin(torch.sqrt((ys - SIZE / 2) ** 2 + (xs - SIZE / 2) ** 2) / (2 + seed % 5)) * 0.5 + 0.5
    return rings.unsqueeze(-1) * colour  # (band, SIZE, 3)


def denoise_step(prompt: str, step: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """One 'diffusion' step of this rank's band: the target with noise that fades as steps pass."""
    time.sleep(STEP_SECONDS)  # the model's work
    noise = torch.rand(band, SIZE, 3, generator=generator, device="cpu").to(device)
    left = 1 - (step + 1) / steps
    return (target_band(prompt) * (1 - left) + noise * left).clamp(0, 1)


def gather(part: torch.Tensor) -> torch.Tensor | None:
    """Every rank's band, stacked on rank 0 (None elsewhere)."""
    if world == 1:
        return part
    parts = [torch.empty_like(part) for _ in range(world)]
    dist.all_gather(parts, part.contiguous())
    return torch.cat(parts) if rank == 0 else None


def jpeg(image: torch.Tensor) -> str:
    pixels = (image * 255).to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def control(value: int) -> int:
    """Rank 0 tells the group to run (1 + job) or stop a job (0); the others learn what it said."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_steps(job: dict):
    """The work every rank does for one job; yields (step, gathered image or None) on rank 0."""
    generator = torch.Generator().manual_seed(zlib.crc32(job["prompt"].encode()) + rank)
    for step in range(job["steps"]):
        if rank == 0:
            yield step, None  # the caller decides whether to go on (client still there?)
        if control(1) == 0:
            return
        part = denoise_step(job["prompt"], step, job["steps"], generator)
        last = step == job["steps"] - 1
        if last or (step + 1) % job["preview_every"] == 0:
            image = gather(part)
            if rank == 0:
                yield step, image


def worker_loop():
    """Ranks other than 0: wait for jobs from rank 0, forever."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            break
        if box[0] == 0:
            continue  # a stop for a job this rank had already finished
        for _ in run_steps(box[0]):
            pass


# Every collective runs on this one thread, in submission order, so rank 0's calls always line
# up with the other ranks', whatever the HTTP side does; jobs take turns through job_lock.
collectives = ThreadPoolExecutor(max_workers=1)
job_lock = asyncio.Lock()
app = FastAPI()


def event(data: dict, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"


async def stream_job(request: StreamRequest):
    job = request.model_dump()
    loop = asyncio.get_running_loop()
    async with job_lock:
        if world > 1:
            await loop.run_in_executor(collectives, dist.broadcast_object_list, [job], 0)
        steps = run_steps(job)
        last_preview = 0.0
        finished = False
        try:
            while (item := await loop.run_in_executor(collectives, next, steps, None)) is not None:
                step, image = item
                if image is None:
                    if step % request.progress_every == 0:
                        progress = {"step": step, "progress": (step + 1) / request.steps}
                        yield event({**progress, "message": f"Processing step {step + 1}/{request.steps}"})
                    continue
                if step == request.steps - 1:
                    finished = True
                    yield event({"output": jpeg(image), "steps": request.steps, "num_gpus": world}, "done")
                elif time.monotonic() - last_preview >= PREVIEW_MIN_INTERVAL:
                    last_preview = time.monotonic()
                    yield event({"step": step, "preview": jpeg(image), "num_gpus": world})
        finally:
            # The client left (the response task was cancelled): queue a stop behind whatever step
            # is still running, so the other ranks leave the job instead of waiting forever.
            if not finished and world > 1:
                collectives.submit(control, 0)


@app.post("/stream")
def stream(request: StreamRequest):
    return StreamingResponse(stream_job(request), media_type="text/event-stream")


@app.get("/health")
def health():
    return {"num_gpus": world, "device": str(device)}


if __name__ == "__main__":
    if rank == 0:
        try:
            uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
        finally:
            if world > 1:
                dist.broadcast_object_list([None], src=0)
    else:
        worker_loop()
    if world > 1:
        dist.destroy_process_group()
