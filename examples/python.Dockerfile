# syntax=docker/dockerfile:1
# The Python examples' image (stream-me, hook, fake-video-render, text-model, progress-preview,
# multi-gpu, token-stream), with the Sluice Python client (`import sluice`) that hook calls its
# GPU function with. Build from the repository root, so the image holds clients/python
# (python.Dockerfile.dockerignore picks what is sent). The base image brings CUDA-enabled torch.
#   docker build -f examples/python.Dockerfile -t sluice-examples-python:dev .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
RUN pip install --no-cache-dir "fastapi>=0.110" "uvicorn>=0.30" "httpx>=0.27" "httpx-sse>=0.4" pillow numpy
COPY clients/python /tmp/sluice-client
RUN pip install --no-cache-dir /tmp/sluice-client && rm -rf /tmp/sluice-client
WORKDIR /examples
COPY examples .
USER 1000:1000
