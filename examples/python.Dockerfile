# syntax=docker/dockerfile:1
# The Python examples' image (stream-me, fake-video-render, text-model, progress-preview,
# multi-gpu, token-stream). The base image brings CUDA-enabled torch for GPU nodes.
#   docker build -f examples/python.Dockerfile -t sluice-examples-python:dev examples
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
RUN pip install --no-cache-dir "fastapi>=0.110" "uvicorn>=0.30" "httpx>=0.27" "httpx-sse>=0.4" pillow numpy "mlserver>=1.7,<1.8"
WORKDIR /examples
COPY . .
USER 1000:1000
