# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test lint typecheck install summary model train export evaluate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

# Until the inference service lands, `run` shows what the committed models are,
# checks that each ONNX file still computes what its Keras checkpoint does, and
# scores the ONNX files on the test split (printing only; nothing is rewritten).
run: $(STAMP)
	$(PY) -m model_export summary
	$(PY) -m model_export check
	$(PY) -m model_export evaluate --samples 64 --dry-run

test: $(STAMP) lint typecheck
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check model_export tests
	$(PY) -m ruff format --check model_export tests

typecheck: $(STAMP)
	$(PY) -m mypy

summary: $(STAMP)
	$(PY) -m model_export summary

# The full training pipeline that produced the committed models (2-core CPU, about 80 minutes).
# The CNN-LSTM needs the higher learning rate: at 1e-3 it settles on the mean frame.
model: $(STAMP)
	$(PY) -m model_export train --variant convlstm --samples 3000 --epochs 20 --max-minutes 65
	$(PY) -m model_export train --variant cnn_lstm --samples 3000 --epochs 20 --max-minutes 12 \
		--learning-rate 0.003
	$(PY) -m model_export export
	$(PY) -m model_export evaluate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
