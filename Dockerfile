# syntax=docker/dockerfile:1
#
# Three stages:
#   train        TensorFlow + tf2onnx: exports models/convlstm.onnx and its card from the
#                committed Keras checkpoint (the export refuses to write when parity > 1e-4);
#                --build-arg RETRAIN=1 trains the checkpoint from scratch first.
#   runtime-cpu  the server on a slim Python image with the CPU onnxruntime.
#   runtime      the server on CUDA + cuDNN with onnxruntime-gpu; the default target (last),
#                on the base GPU_BASE names (the CPU image's, unless told; see below).
#
#   docker build -t convlstm-serve:gpu .
#   docker build --target runtime-cpu -t convlstm-serve:cpu .
#   docker build --build-arg RETRAIN=1 -t convlstm-serve:gpu .
#
# Each stage installs the exact pins from pyproject.toml before it copies any code, so a code
# edit reuses the dependency layers. `python -c "$PINS" EXTRA...` prints the project's
# dependencies plus those of each named extra, one per line (tomllib is in the stdlib).
ARG PINS="import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *(r for e in sys.argv[1:] for r in p['optional-dependencies'][e]), sep=chr(10))"
# The base of the GPU image (the `runtime` stage): the CPU image's Debian Python with CUDA
# from PyPI's NVIDIA wheels, or NVIDIA's CUDA image (see the runtime stage).
ARG GPU_BASE=python:3.11-slim-bookworm


FROM python:3.11-slim-bookworm AS train
ARG PINS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /build
COPY pyproject.toml ./
RUN python -c "$PINS" train > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY convlstm_card/ convlstm_card/
COPY model_export/ model_export/
COPY models/ models/

# RETRAIN=1 runs the training of `make model` (about 65 minutes on a 2-core CPU) before the
# export; otherwise the committed checkpoint models/convlstm.keras is exported as it is.
# `quantize` makes the opt-in int8 graph from the exported float32 one; `evaluate` refills
# the cards' test-split scores, which every export resets.
# The out-of-distribution set is left to `make evaluate` (--ood-samples 0 here): its
# glyphs need Debian's font packages, and scoring it takes longer than the rest of
# this stage on a 2-core builder. The image's cards then carry the test split's scores
# only; the repository's cards (models/*.json) carry both.
ARG RETRAIN=0
ARG TRAIN_SAMPLES=3000
ARG TRAIN_EPOCHS=20
ARG TRAIN_MAX_MINUTES=65
RUN if [ "$RETRAIN" = "1" ]; then \
        python -m model_export train --variant convlstm --samples "$TRAIN_SAMPLES" --epochs "$TRAIN_EPOCHS" --max-minutes "$TRAIN_MAX_MINUTES" --out models; \
    fi \
    && python -m model_export export --models models --variant convlstm cnn_lstm \
    && python -m model_export quantize --models models \
    && python -m model_export evaluate --models models --ood-samples 0 --variant convlstm convlstm_int8 cnn_lstm


FROM python:3.11-slim-bookworm AS runtime-cpu
ARG PINS
LABEL org.opencontainers.image.title="convlstm-serve (CPU)" \
      org.opencontainers.image.description="ConvLSTM next-frame prediction over HTTP, onnxruntime on CPU" \
      org.opencontainers.image.licenses="Apache-2.0"
# The server reads every setting from CONVLSTM_* variables; it must listen on all interfaces
# to be reachable through a published port. MALLOC_ARENA_MAX=2: each model load starts
# threads that would otherwise keep glibc arenas alive, growing RSS over load/unload cycles.
# CONVLSTM_SIMULATED_ALLOWED=false: an image built for production never answers with the
# simulated device's outputs unless the deployment asks for it explicitly.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CONVLSTM_HOST=0.0.0.0 \
    CONVLSTM_PORT=8000 \
    CONVLSTM_GRPC_PORT=8001 \
    CONVLSTM_PROVIDER=cpu \
    CONVLSTM_SIMULATED_ALLOWED=false \
    MALLOC_ARENA_MAX=2

RUN groupadd --gid 10001 convlstm \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin convlstm

WORKDIR /app
COPY pyproject.toml ./
RUN python -c "$PINS" serve cpu > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY convlstm_card/ convlstm_card/
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
# Both models with their cards (and the ConvLSTM's one-step graph, which streams run): the
# server serves every model with a card in models/,
# convlstm (CONVLSTM_MODEL_PATH) by default. The int8 graph lies apart, served only when
# CONVLSTM_MODEL_PATH=models/int8/convlstm_int8.onnx names it.
COPY --from=train /build/models/convlstm.onnx /build/models/convlstm.json \
     /build/models/convlstm.step.onnx \
     /build/models/cnn_lstm.onnx /build/models/cnn_lstm.json models/
COPY --from=train /build/models/int8/ models/int8/

USER 10001:10001
# HTTP, and the Open Inference Protocol over gRPC (CONVLSTM_GRPC_PORT).
EXPOSE 8000 8001
# No --start-interval: builders before Docker 25 (and podman 4's buildah) reject the flag,
# which would make the image unbuildable there. Instead the check polls every 5 s, so a
# container turns healthy within seconds of /readyz answering 200.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVLSTM_PORT', '8000') + '/readyz', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]


# The GPU image: the server with onnxruntime-gpu and the CUDA 13 + cuDNN 9 libraries its
# CUDA provider loads, on the base GPU_BASE names (see the ARG at the top):
#
#   python:3.11-slim-bookworm (default)  the CPU image's Debian Python, with CUDA and cuDNN
#       from PyPI's NVIDIA wheels at the `cuda` extra's pins (what onnxruntime-gpu's own
#       `cuda` and `cudnn` extras resolve to). Needs no CUDA base image, so it builds
#       wherever the CPU image does; `make gpu-image-test` builds and checks this one.
#   nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04  NVIDIA's image, which holds the same
#       libraries (cudart, cuBLAS, cuFFT, cuRAND, NVRTC, cuDNN 9) as Ubuntu packages, for
#       those who can pull it; its Python is Ubuntu's 3.12 in a venv, and the `cuda`
#       extra is not installed (it would be a second copy).
#
#   docker build -t convlstm-serve:gpu .
#   docker build --build-arg GPU_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 -t convlstm-serve:gpu .
#
# One stage whose steps ask which base they are on (NVIDIA's images set CUDA_VERSION),
# rather than a stage per base picked by `FROM stage-${GPU_BASE}`: podman's builder (buildah
# 1.28) decides which stages are used before it expands the ARG, skips the base stage,
# then finds no image of that name.
#
# onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9: ONNX Runtime's CUDA EP
# requirements page says a build runs on any CUDA minor release of its major version but
# never across cuDNN majors. Either way the host needs an NVIDIA driver for CUDA 13 (R580 or
# newer) and the NVIDIA Container Toolkit; without them the server starts on the CPU and
# says why (or, with CONVLSTM_REQUIRE_GPU=true, stays up, not ready, and says why).
FROM ${GPU_BASE} AS runtime
ARG PINS
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="convlstm-serve (GPU)" \
      org.opencontainers.image.description="ConvLSTM next-frame prediction over HTTP, onnxruntime on CUDA" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    CONVLSTM_HOST=0.0.0.0 \
    CONVLSTM_PORT=8000 \
    CONVLSTM_GRPC_PORT=8001 \
    CONVLSTM_SIMULATED_ALLOWED=false \
    MALLOC_ARENA_MAX=2

# On NVIDIA's Ubuntu image: Ubuntu 24.04's Python 3.12 (the project supports 3.11 and 3.12)
# in a venv at /opt/venv, first on PATH. Its packages are not version-pinned: the Ubuntu
# archive keeps only the newest build of each, so a pin would break the build at the next
# security update; the Python packages are all pinned.
# hadolint ignore=DL3008
RUN if [ -n "${CUDA_VERSION:-}" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
        && rm -rf /var/lib/apt/lists/* \
        && python3.12 -m venv /opt/venv; \
    fi \
    && groupadd --gid 10001 convlstm \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin convlstm

WORKDIR /app
COPY pyproject.toml ./
# onnxruntime-gpu, and on the Debian base the `cuda` extra's NVIDIA wheels, in a layer of
# their own below the server's packages. The serve extra's pins constrain what
# onnxruntime-gpu pulls in (protobuf, packaging), so the next layer changes nothing here.
# Only what the CUDA provider loads stays: the wheels' headers, static archives, cuBLAS's
# NVBLAS and cuFFT's FFTW interface (nothing in onnxruntime links them) go in the same
# layer, so they never reach the image. ort.preload_dlls() (service/inference/session.py)
# finds the libraries in site-packages/nvidia/*/lib; no LD_LIBRARY_PATH is needed.
RUN if [ -n "${CUDA_VERSION:-}" ]; then python -c "$PINS" gpu; \
    else python -c "$PINS" gpu cuda; fi > /tmp/requirements.txt \
    && python -c "$PINS" serve > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/constraints.txt \
    && nvidia=$(python -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null || true) \
    && if [ -n "$nvidia" ]; then \
        find "$nvidia" \( -name include -o -name '*.a' -o -name 'libnvblas.so*' -o -name 'libcufftw.so*' \) -prune -exec rm -rf {} +; \
    fi
RUN python -c "$PINS" serve > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY convlstm_card/ convlstm_card/
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
# Both models with their cards (and the ConvLSTM's one-step graph, which streams run): the
# server serves every model with a card in models/,
# convlstm (CONVLSTM_MODEL_PATH) by default. The int8 graph lies apart, served only when
# CONVLSTM_MODEL_PATH=models/int8/convlstm_int8.onnx names it.
COPY --from=train /build/models/convlstm.onnx /build/models/convlstm.json \
     /build/models/convlstm.step.onnx \
     /build/models/cnn_lstm.onnx /build/models/cnn_lstm.json models/
COPY --from=train /build/models/int8/ models/int8/

USER 10001:10001
# HTTP, and the Open Inference Protocol over gRPC (CONVLSTM_GRPC_PORT).
EXPOSE 8000 8001
# No --start-interval: builders before Docker 25 (and podman 4's buildah) reject the flag,
# which would make the image unbuildable there. Instead the check polls every 5 s, so a
# container turns healthy within seconds of /readyz answering 200.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVLSTM_PORT', '8000') + '/readyz', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
