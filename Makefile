# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The server gets a venv of its own, without TensorFlow: what a deployment installs.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
# The server with the real onnxruntime-gpu wheel, for the test that a machine without an
# NVIDIA driver falls back to the CPU provider (what the CUDA image does on such a host).
GPU_ENV := .venv-gpu-fallback
GPU_ENV_STAMP := $(GPU_ENV)/.installed
# One venv per peer server (make bench-peers); KServe's also holds the types that judge
# this server's bodies in make test (make kserve-env).
PEERS_VENVS := .venv-peers
# onnxruntime-gpu with the CUDA and cuDNN wheels it loads (the GPU image's pins) where an
# NVIDIA driver answers, the CPU wheel everywhere else.
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu,cuda || echo cpu)
HOST ?= 127.0.0.1
PORT ?= 8000
# The default model; MODEL=models/int8/convlstm_int8.onnx serves the opt-in int8 graph.
MODEL ?= models/convlstm.onnx
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The fast graph's channels-first convolutions need TensorFlow's oneDNN kernels, which it
# turns on by default only on some Intel CPUs (model_export/__init__.py says the same).
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: run check test fuzz kserve-env docs docs-strict browser load-tools stream-tools test-stream-replicas bench bench-swap bench-peers bench-streams bench-stream-store bench-transports soak lint typecheck install summary model train export evaluate clean gpu-pack gpu-fallback-env container-tools compose-test gpu-image-test test-all bench-train-stream bench-train-backends bench-train-feedback fonts

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[serve,cpu,train,dev]"
	$(PY) -m pip install --quiet -e clients/python
	touch $(STAMP)

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -e ".[serve,$(ORT_EXTRA)]"
	touch $(SERVE_STAMP)

$(GPU_ENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(GPU_ENV)
	$(GPU_ENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_ENV)/bin/python -m pip install --quiet -e ".[serve,gpu]"
	touch $(GPU_ENV_STAMP)

install: $(STAMP)

gpu-fallback-env: $(GPU_ENV_STAMP)

# The wheels the lent GPU machine lacks, re-packed in parts that fit one device call each,
# with a manifest (docs/gpu.md says how to send them and run the jobs).
gpu-pack: $(STAMP)
	$(PY) -m gpu.pack

# Serve the committed ConvLSTM on http://$(HOST):$(PORT) (CONVLSTM_* variables apply).
run: $(SERVE_STAMP)
	$(SERVE_VENV)/bin/python -m service --host $(HOST) --port $(PORT) --model $(MODEL)

# Check and score the committed models (the training-stage tools; prints only).
check: $(STAMP) fonts
	$(PY) -m model_export summary
	$(PY) -m model_export check
	$(PY) -m model_export evaluate --samples 64 --ood-samples 64 --dry-run --variant convlstm convlstm_int8 cnn_lstm

# Score the committed models on the test split and the out-of-distribution set, and
# write the scores into their cards (models/*.json) and models/predictions.png; then the
# out-of-distribution set one factor at a time (64 sequences a set, the float models).
evaluate: $(STAMP) fonts
	$(PY) -m model_export evaluate --variant convlstm convlstm_int8 cnn_lstm
	$(PY) -m model_export evaluate --ood-breakdown --variant convlstm cnn_lstm

test: $(STAMP) $(GPU_ENV_STAMP) $(PEERS_VENVS)/kserve/.installed lint typecheck docs-strict browser load-tools stream-tools fonts
	$(PY) -m pytest

# The long fuzz run (`make test` runs a bounded one: about 25,000 cases and 1.5 minutes):
# every boofuzz mutation of every route family against the real server on loopback (a
# 50,000-case first pass, then all 200,000), then schemathesis on the OpenAPI document
# with 10x the examples; 11.5 minutes on 2 shared cores. Pass: no 5xx, the process alive,
# resident memory flat over the boofuzz passes (tests/service/test_http_fuzz.py).
fuzz: $(STAMP)
	CONVLSTM_FUZZ_LONG=1 $(PY) -m pytest tests/service/test_http_fuzz.py -s -p no:cacheprovider

# KServe's own pydantic types judge this server's time-series and Open Inference Protocol
# bodies (tests/service/test_kserve_types.py). KServe pins protobuf<7 against the
# training stage's 7.x, so its types live in the venv of `make bench-peers` (kserve.txt).
kserve-env: $(PEERS_VENVS)/kserve/.installed

# wrk (Debian's), the C load generator of bench.sim and the simulated-device tests: the
# Python generator cannot offer 150 requests/s of 288 kB bodies on 2 shared cores without
# becoming the bottleneck. promtool (Debian's prometheus) checks deploy/'s alert rules.
# As root, install them when missing; otherwise the load tests fall back to the Python
# generator and the rule check skips, each saying so.
# Fonts the varied training glyphs and the out-of-distribution set are drawn from
# (model_export/frames/scenes.py).
fonts:
	@ls /usr/share/fonts/truetype/freefont/FreeSans.ttf /usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-comic-neue; } || echo "no fonts and not root: the tests that draw font glyphs fail with the apt-get line to run"

load-tools:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; } || echo "no wrk and not root: the load tests use the Python generator"
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || echo "no promtool and not root: the alert-rule check skips"

# Debian's redis-server and nginx for the stream tests: shared stream state across real
# replicas, and the nginx edge hashing on the stream id (tests/service/test_streams_*.py
# start them on free loopback ports in temporary directories; installing nginx here does
# not start it, no init system runs in the test machines).
stream-tools:
	@command -v redis-server >/dev/null && command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server nginx-light; } || echo "no redis-server/nginx and not root: the stream store tests skip"

# Streams across real server processes sharing a real Redis (32 streams x 40 frames
# alternating between two replicas, one killed with SIGKILL, SIGTERM and restart with
# drain, a real nginx in front): part of `make test`; this target runs them alone.
test-stream-replicas: $(STAMP) stream-tools
	$(PY) -m pytest tests/service/test_streams_replicas.py -p no:cacheprovider

# The documentation site (mkdocs.yml), into site/. The settings table, the HTTP
# operations and the results tables are generated at build time (docs_build/hooks.py);
# `python -m docs_build openapi` rewrites the committed docs/openapi.json.
DOCS_ENV := NO_MKDOCS_2_WARNING=1

docs: $(STAMP)
	$(DOCS_ENV) $(PY) -m mkdocs build

# In `make test`: a broken link, a page left out of the nav or a generated table that
# fails stops the build.
docs-strict: $(STAMP)
	$(DOCS_ENV) $(PY) -m mkdocs build --strict --site-dir $(CURDIR)/.site-check
	rm -rf $(CURDIR)/.site-check

# The browser tests drive Debian's Chromium (no browser download works here). As root,
# install it when missing; otherwise those tests skip and say why.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || echo "no /usr/bin/chromium and not root: the browser tests will skip"

# `docker compose up` for real, with podman: builds the train and runtime-cpu images
# (tests/containers/build.sh; a stand-in python:3.11-slim-bookworm from Debian packages
# where no registry answers), then runs docker-compose.yml with deploy/compose/cpu.yml and
# checks the running service (tests/containers/test_compose.py). As root, installs Debian's
# podman, runc and mmdebstrap when missing; otherwise it fails and says what is missing.
COMPOSE_ENV := CONTAINERS_CONF=$(CURDIR)/tests/containers/containers.conf

container-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap; } \
		|| { echo "compose-test needs podman, runc and mmdebstrap: apt-get install them as root" >&2; exit 1; }

compose-test: $(STAMP) container-tools
	$(COMPOSE_ENV) tests/containers/build.sh
	$(COMPOSE_ENV) COMPOSE_TEST=1 $(PY) -m pytest tests/containers -q -s -p no:cacheprovider

# The GPU image (the Dockerfile's `runtime` stage on its default base, GPU_BASE=pip) built
# with podman and run without a GPU (tests/containers/test_gpu_image.py): the CUDA provider
# installed with every library it links resolved, the CPU fallback with its reason, the
# not-ready refusal under CONVLSTM_REQUIRE_GPU=1, health check, user, read-only root, drain.
# Not in `make test` nor CI's `.ci/run`: its wheels are 1.6 GB (pip downloads them once into
# .cache/gpu-wheels, ignored), and after compose-test's train stage the first build takes
# 2 min 9 s and the tests 1 min 30 s on 2 shared cores (load average 10-13): about 4
# minutes with the download, all CI has left of its 30. `make test-all` runs it.
gpu-image-test: $(STAMP) container-tools
	$(COMPOSE_ENV) tests/containers/build.sh gpu
	$(COMPOSE_ENV) GPU_IMAGE_TEST=1 $(PY) -m pytest tests/containers/test_gpu_image.py -q -s -p no:cacheprovider

# Everything: CI's two targets and the GPU image's tests (over 30 minutes on 2 cores).
test-all: test compose-test gpu-image-test

lint: $(STAMP)
	$(PY) -m ruff check convlstm_card model_export service clients bench gpu examples tests docs_build
	$(PY) -m ruff format --check convlstm_card model_export service clients bench gpu examples tests docs_build

typecheck: $(STAMP)
	$(PY) -m mypy

summary: $(STAMP)
	$(PY) -m model_export summary

# The full training pipeline that produced the committed models (2-core CPU, about 5.5
# hours), then the opt-in int8 graph made from the exported ConvLSTM. The ConvLSTM is
# trained in seven segments, each resuming from the last (docs/recipe.md): the sigmoid head
# from scratch, the carry head put on that stack, the carry head on fresh sequences, then
# fresh sequences half drawn from the varied training family (other fonts, 1-3 glyphs,
# dark backgrounds, occlusion; model_export/frames/scenes.py), augmented, twice; then
# twice more with 0.1 x (1 - SSIM) added to the loss, the last run on its own predictions
# (K = 2, L1 on the fed-back frame). The fourth segment's 95 minutes ended in its second
# epoch on the shared 2-core AMD EPYC; the fifth and sixth ran two epochs each in 70 and
# 82 minutes in bf16 on a 2-core Xeon with AMX (float32 on a CPU without native bf16
# takes about twice as long), the seventh 8 minutes.
# The CNN-LSTM needs the higher learning rate from scratch (at 1e-3 it settles on the mean
# frame); its second segment continues it at 1e-3 on the ConvLSTM's varied mix.
model: $(STAMP) fonts
	$(PY) -m model_export train --variant convlstm --head sigmoid --samples 3000 --epochs 20 \
		--max-minutes 65
	$(PY) -m model_export train --variant convlstm --head carry --samples 800 --epochs 1 \
		--validation-samples 32 --resume models/convlstm.keras
	$(PY) -m model_export train --variant convlstm --head carry --samples 3000 --epochs 1 \
		--skip-samples 3000 --resume models/convlstm.keras --max-minutes 31
	$(PY) -m model_export train --variant convlstm --samples 1600 --epochs 4 \
		--skip-samples 6000 --resume models/convlstm.keras --varied-share 0.5 --augment \
		--learning-rate 5e-4 --precision float32 --max-minutes 95 --patience 3
	$(PY) -m model_export train --variant convlstm --samples 7000 --epochs 2 \
		--skip-samples 8000 --resume models/convlstm.keras --varied-share 0.5 --augment \
		--learning-rate 5e-4 --schedule cosine --seed 1 --max-minutes 100
	$(PY) -m model_export train --variant convlstm --samples 8000 --epochs 2 \
		--skip-samples 16000 --resume models/convlstm.keras --varied-share 0.5 --augment \
		--learning-rate 5e-4 --schedule cosine --seed 2 --ssim-weight 0.1 --max-minutes 110
	$(PY) -m model_export train --variant convlstm --samples 800 --epochs 1 \
		--validation-samples 32 --skip-samples 24000 --resume models/convlstm.keras \
		--varied-share 0.5 --augment --learning-rate 2.5e-4 --schedule cosine \
		--feedback-steps 2 --feedback-loss l1 --ssim-weight 0.1
	$(PY) -m model_export train --variant cnn_lstm --samples 3000 --epochs 20 --max-minutes 12 \
		--learning-rate 0.003
	$(PY) -m model_export train --variant cnn_lstm --samples 3000 --epochs 20 --max-minutes 15 \
		--skip-samples 3000 --resume models/cnn_lstm.keras --varied-share 0.5 --augment
	$(PY) -m model_export export
	$(PY) -m model_export quantize
	$(PY) -m model_export evaluate --variant convlstm convlstm_int8 cnn_lstm

# Benchmarks (about 6 minutes on a 2-core CPU) and the soak test (5 minutes), on
# loopback only; results under bench/results/.
bench: $(STAMP) load-tools stream-tools
	$(PY) -m bench.suite

# Model versions swapped under load, and unload/load cycles (about 2 minutes on a 2-core
# CPU); bench/results/swap.md.
bench-swap: $(STAMP)
	$(PY) -m bench.swap

# This project's server beside MLServer, KServe and BentoML (55 minutes on a busy, shared 2-core
# CPU): each peer gets its own venv from its pinned bench/peers/NAME.txt. Not part of `test`.
PEER_STAMPS := $(foreach p,mlserver kserve bentoml,$(PEERS_VENVS)/$(p)/.installed)

$(PEERS_VENVS)/%/.installed: bench/peers/%.txt
	$(PYTHON) -m venv $(PEERS_VENVS)/$*
	$(PEERS_VENVS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENVS)/$*/bin/python -m pip install --quiet -r $<
	touch $@

bench-peers: $(STAMP) $(PEER_STAMPS)
	$(PY) -m bench.peers.run
# The Open Inference Protocol over gRPC beside REST binary and JSON (cnn_lstm, 1 and 8
# clients, server CPU per request; about a minute); also a section of `make bench`.
bench-transports: $(STAMP)
	$(PY) -m bench.transports

# Streams against the windowed graph: per-frame cost, horizon-8 roll-out, memory per
# stream, concurrent streams at 5 frames/s; bench/results/streams.json.
bench-streams: $(STAMP)
	$(PY) -m bench.streams

# What keeping stream state in Redis costs: memory, redis+drain and redis+step servers
# side by side, interleaved rounds at 4 and 16 streams, and where the time goes (blob
# encode/decode, Redis save/load); bench/results/stream_store.json and .md. About 5
# minutes. Also a section of `make bench`; this target runs it alone.
bench-stream-store: $(STAMP) stream-tools
	$(PY) -m bench.stream_store

# Training from disk (train --data PATH --stream): peak RSS under a 1 GiB bound while
# reading every window of a 4 GiB generated data set and while training on it (a small
# ConvLSTM), and throughput against the in-memory path on one that fits, A B A B; about 3
# minutes; bench/results/train_stream.json and .md, written part by part.
bench-train-stream: $(STAMP)
	$(PY) -m bench.train_stream

# Keras on TensorFlow, JAX and PyTorch (CPU builds; JAX and PyTorch in their own venvs
# under .venv-backends/ from bench/backends/NAME.txt, PyTorch's about 5 GB), float32 and
# mixed bfloat16: equal-time training runs, sequences/s and validation loss; about 30
# minutes; bench/results/train_backends.json (docs/training.md has the table).
BACKEND_VENVS := .venv-backends

$(BACKEND_VENVS)/%/.installed: bench/backends/%.txt
	$(PYTHON) -m venv $(BACKEND_VENVS)/$*
	$(BACKEND_VENVS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(BACKEND_VENVS)/$*/bin/python -m pip install --quiet -r $<
	touch $@

bench-train-backends: $(STAMP) $(BACKEND_VENVS)/jax/.installed $(BACKEND_VENVS)/torch/.installed
	$(PY) -m bench.train_backends --timeout 900 --python-jax $(BACKEND_VENVS)/jax/bin/python \
		--python-torch $(BACKEND_VENVS)/torch/bin/python

# The cost of train --feedback-steps 3 against 1: seconds per optimiser step of the
# release ConvLSTM at batch 8, interleaved rounds (a few minutes on the 2-core CPU);
# bench/results/train_feedback.json.
bench-train-feedback: $(STAMP)
	$(PY) -m bench.train_feedback

soak: $(STAMP)
	$(PY) -m bench.soak --minutes 5 --concurrency 4

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(GPU_ENV) $(PEERS_VENVS) $(BACKEND_VENVS) .pytest_cache .mypy_cache .ruff_cache site .site-check
