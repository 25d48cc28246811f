#!/usr/bin/env bash
# One device call on the GPU machine (docs/gpu.md): bash gpu/run.sh receive|diagnose|infer|train [ARGS]
# receive: keep the part this call carried; infer/train: install, then run the job.
set -uo pipefail
job=${1:?receive, diagnose, infer or train}
shift
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv,noheader || true
case "$job" in
receive)
    python3 -m gpu.receive
    ;;
diagnose)
    python3 -m gpu.receive --install infer --record "$OUT/cuda_libraries.json" || exit 1
    export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH"
    python3 -m gpu.diagnose --out "$OUT" "$@" 2>&1 | tee "$OUT/diagnose.log"
    ;;
infer)
    python3 -m gpu.receive --install infer --record "$OUT/cuda_libraries.json" || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
    python3 -m gpu.infer --out "$OUT" "$@" 2>&1 | tee "$OUT/infer.log"
    ;;
train)
    python3 -m gpu.receive --install train --record "$OUT/cuda_libraries.json" || exit 1
    export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=torch
    # The varied family's fonts (the machine has no Debian fonts), checked by receive.
    export MODEL_EXPORT_FONT_DIR="$PWD/.gpu-pack/train/fonts"
    python3 -m gpu.train --out "$OUT" "$@" 2>&1 | tee "$OUT/train.log"
    ;;
*)
    echo "unknown job $job" >&2
    exit 2
    ;;
esac
