# The sdq GPU worker: `python -m handlers.worker` on a CUDA host (ECS GPU instances; see docs/deploy.md).
#
# Build (from the repository root):   docker build -t sdq-worker .
# Run anywhere with an NVIDIA GPU:    docker run --gpus all -e SDQ_QUEUE_URL=... -v /opt/sdq/models:/models sdq-worker
#
# CUDA base, not cudnn-runtime: PyTorch's CUDA wheels carry their own CUDA runtime and cuDNN, so this base only
# adds what the NVIDIA container runtime needs (driver capabilities), not a second copy of those libraries.
FROM nvidia/cuda:12.6.3-base-ubuntu24.04

# NVIDIA_DISABLE_REQUIRE: let the container start on hosts whose driver predates CUDA 12.6; the wheels' CUDA 12
# runtime runs on any R525+ driver (minor-version compatibility). The ECS GPU AMI ships a recent driver anyway.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DISABLE_REQUIRE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY handlers ./handlers
COPY workflows ./workflows

# torch from PyPI is the CUDA 12 build on x86_64 Linux. Set TORCH_INDEX_URL (e.g. .../whl/cu126) to pin a build.
ARG TORCH_INDEX_URL=
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && pip install ".[worker]" \
    && python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Non-root. Model weights are fetched at start into /models (HF_HOME), a volume on the instance's disk that
# outlives the container: a replaced worker on the same instance starts without downloading again.
RUN useradd --uid 10001 --no-create-home --home-dir /models --shell /usr/sbin/nologin sdq \
    && mkdir -p /models \
    && chown 10001:10001 /models
ENV HF_HOME=/models/hf \
    SDQ_MODEL_CACHE=/models/sdq \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
WORKDIR /models

# SIGTERM (ECS stop, scale-in) is the worker's warm stop: it finishes the running batch within SDQ_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "handlers.worker"]
