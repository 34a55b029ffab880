# The sdq GPU worker: `python -m handlers.worker` on a CUDA host (ECS GPU instances; see docs/deploy.md).
#
# Build (from the repository root):   docker build -t sdq-worker .
# Run anywhere with an NVIDIA GPU:    docker run --gpus all -e SDQ_QUEUE_URL=... -v /opt/sdq/models:/models sdq-worker
#
# CUDA base, not cudnn-runtime: PyTorch's CUDA wheels carry their own CUDA runtime and cuDNN, so this base only
# adds what the NVIDIA container runtime needs (driver capabilities), not a second copy of those libraries.
FROM nvidia/cuda:12.6.3-base-ubuntu24.04

# NVIDIA_DISABLE_REQUIRE: the base's CUDA version is not the one that runs; the locked torch wheels bring a CUDA 13
# runtime (requirements/worker.txt: nvidia-cuda-runtime 13.x), which needs an R580+ driver on the host.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DISABLE_REQUIRE=1

# A C and C++ compiler and Python's headers: the speed levers need them at run time (Triton builds its launcher
# module on first use; AOTInductor packages are C++ libraries). Ubuntu's g++ links libstdc++ dynamically, as a
# package must: one linked statically crashes at load (docs/performance.md, AOTInductor packages).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The locked worker dependencies first, from the lock alone: a code change reuses these (torch) layers.
# torch==2.13.0 from PyPI is the CUDA build on x86_64 Linux; it brings its own CUDA runtime (nvidia-* wheels).
COPY requirements/worker.txt /tmp/worker.txt
RUN pip install --no-deps -r /tmp/worker.txt && pip check

# Then the service alone (shared, handlers, workflows), without dependencies: the lock already installed them.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY handlers ./handlers
COPY workflows ./workflows
RUN pip install --no-deps . \
    && python -c "import torch, diffusers, handlers.worker; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Non-root. Model weights are fetched at start into /models (HF_HOME), a volume on the instance's disk that
# outlives the container: a replaced worker on the same instance starts without downloading again.
RUN useradd --uid 10001 --no-create-home --home-dir /models --shell /usr/sbin/nologin sdq \
    && mkdir -p /models \
    && chown 10001:10001 /models
ENV HF_HOME=/models/hf \
    SDQ_MODEL_CACHE=/models/sdq \
    SDQ_HEALTH_FILE=/tmp/sdq-worker-alive \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
WORKDIR /models

# Unhealthy once the worker stops touching SDQ_HEALTH_FILE (a process too wedged for its own watchdog, which
# exits with status 70 on a hung GPU call); ECS runs the task definition's HealthCheck, the same command.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-m", "workflows.generation.health"]

# SIGTERM (ECS stop, scale-in) is the worker's warm stop: it finishes the running batch within SDQ_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "handlers.worker"]
