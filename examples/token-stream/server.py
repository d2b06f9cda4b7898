"""A GPU function that streams generated tokens: a small decoder-only transformer built in
code and randomly initialised (seeded, no weight downloads), for measuring time to first token
and tokens/s through the sidecar. The text is nonsense; the timing is the point.

    python3 token-stream/server.py --device cuda --layers 12 --d-model 1024   # PORT from env
    POST /generate {"prompt": "...", "max_tokens": 64, "temperature": 0}
      -> text/event-stream: one `data: {"index", "token", "text"}` per token, then
         `event: done` with {"tokens", "ttft_ms", "tokens_per_s"} as the server measured them.

Every flag has an environment twin (TOKEN_STREAM_DEVICE, TOKEN_STREAM_LAYERS, ...).
"""

import argparse
import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from torch import nn

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "du", "sha", "qu", "zen", "ol", "ar", "in"]


def vocabulary(size: int) -> list[str]:
    """Deterministic pseudo-words, so tokens print as text without a tokenizer download."""
    words = []
    for i in range(size):
        word, n = "", i + 1
        while n > 0:
            word += SYLLABLES[n % len(SYLLABLES)]
            n //= len(SYLLABLES)
        words.append(" " + word)
    return words


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(max_len, d_model)
        block = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        x = self.embed(ids) + self.position(positions)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x[:, -1]))


def env_default(name: str, fallback):
    return os.environ.get(f"TOKEN_STREAM_{name.upper().replace('-', '_')}", fallback)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=env_default("device", auto), help=f"cpu, cuda, cuda:1 ... (default {auto})")
    parser.add_argument("--layers", type=int, default=int(env_default("layers", 4)))
    parser.add_argument("--d-model", type=int, default=int(env_default("d-model", 256)))
    parser.add_argument("--heads", type=int, default=int(env_default("heads", 4)))
    parser.add_argument("--vocab", type=int, default=int(env_default("vocab", 4096)))
    parser.add_argument("--max-len", type=int, default=int(env_default("max-len", 1024)))
    parser.add_argument("--threads", type=int, default=int(env_default("threads", 0)), help="CPU threads (0: torch's choice)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9000")))
    return parser.parse_args()


args = parse_args()
if args.threads > 0:
    torch.set_num_threads(args.threads)
torch.manual_seed(0)
device = torch.device(args.device)
dtype = torch.float16 if device.type == "cuda" else torch.float32
model = TinyGPT(args.vocab, args.d_model, args.layers, args.heads, args.max_len).to(device, dtype).eval()
words = vocabulary(args.vocab)
# One generation at a time per process: a GPU runs one batch-1 decode best; the proxy queues the rest.
generate_lock = asyncio.Lock()
model_thread = ThreadPoolExecutor(max_workers=1)
app = FastAPI()


class GenerateRequest(BaseModel):
    prompt: str = Field(default="hello", max_length=10_000)
    max_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    seed: int = 0


def encode(prompt: str) -> list[int]:
    # A stand-in tokenizer: each whitespace word hashes to a token id, deterministically.
    return [sum(ord(c) * 31**i for i, c in enumerate(w)) % args.vocab for w in prompt.split()] or [0]


@torch.inference_mode()
def next_token(ids: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    logits = model(ids[:, -args.max_len :]).float()
    if temperature == 0:
        return int(torch.argmax(logits, dim=-1))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


async def generate(request: GenerateRequest):
    # Each forward pass runs on the model's one thread; between two tokens the event loop is
    # free, and a client that leaves cancels this generator there, so the model stops at once.
    loop = asyncio.get_running_loop()
    async with generate_lock:
        generator = torch.Generator(device=device).manual_seed(request.seed)
        ids = torch.tensor([encode(request.prompt)[-(args.max_len - 1) :]], device=device)
        started = time.perf_counter()
        first_at = started
        for index in range(request.max_tokens):
            token = await loop.run_in_executor(model_thread, next_token, ids, request.temperature, generator)
            if index == 0:
                first_at = time.perf_counter()
            ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
            yield f"data: {json.dumps({'index': index, 'token': token, 'text': words[token]})}\n\n"
        done = time.perf_counter()
        rest = request.max_tokens - 1
        stats = {
            "tokens": request.max_tokens,
            "ttft_ms": round((first_at - started) * 1000, 2),
            "tokens_per_s": round(rest / (done - first_at), 1) if rest > 0 and done > first_at else None,
            "device": str(device),
        }
        yield f"event: done\ndata: {json.dumps(stats)}\n\n"


@app.post("/generate")
async def generate_endpoint(request: GenerateRequest):
    if len(encode(request.prompt)) >= args.max_len:
        raise HTTPException(400, detail=f"prompt longer than {args.max_len - 1} tokens")
    return StreamingResponse(generate(request), media_type="text/event-stream")


@app.get("/health")
def health():
    return {"device": str(device), "parameters": sum(p.numel() for p in model.parameters())}


if __name__ == "__main__":
    print(
        f"token-stream: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {device} ({dtype})",
        flush=True,
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port)
