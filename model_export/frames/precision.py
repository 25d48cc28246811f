"""Which Keras precision policy trains fastest on the machine at hand.

``mixed_bfloat16`` halves the activations' memory and runs at hardware speed only where
bf16 arithmetic is native: a GPU, or a CPU with AVX-512 BF16 or AMX. Elsewhere oneDNN
emulates it, and training measured about 10x slower than float32 on an AVX2-only CPU
(``bench/results/train_backends.json``), so ``auto`` picks float32 there; on a 2-core
Xeon with AMX it trained 1.88x faster than float32 at the same validation loss
(``bench/results/train_precision_amx.json``).
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "mixed_bfloat16", "float32")
# /proc/cpuinfo flags that mean native bf16 matrix arithmetic on x86.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def accelerator_present() -> bool:
    """Whether the active Keras backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        return any(not d.lower().startswith("cpu") for d in keras.distribution.list_devices())
    return False


def resolve_precision(choice: str, *, flags: frozenset[str] | None = None) -> str:
    """``choice`` itself, or for ``auto``: ``mixed_bfloat16`` on a GPU or a CPU with
    native bf16, ``float32`` otherwise."""
    if choice not in PRECISIONS:
        raise ValueError(f"precision {choice!r}: choose one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    native = BF16_FLAGS & (cpu_flags() if flags is None else flags)
    return "mixed_bfloat16" if native or accelerator_present() else "float32"
