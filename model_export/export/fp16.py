"""An opt-in float16 variant of the served graph, for GPUs.

On an H100 the fast graph in float16 ran 2,263 sequences/s at batch 128 against 1,653 in
float32 (``bench/results/gpu/``): tensor cores take float16. The variant keeps the
graph's input and output in float32 (``keep_io_types``, as onnxruntime's float16 guide
does it with onnxconverter-common), so the service and its clients see no difference in
the wire format. It is written only when it predicts as well as the float32 graph on the
test split: next-frame MSE against the true frames at most 1% above float32's.

Like the int8 graph it lives in a directory of its own (``fp16/convlstm_fp16.onnx``), so
the server serves it only when asked (``--model models/fp16/convlstm_fp16.onnx`` or as a
repository entry). It carries no step graph: streams of the float32 model would not
predict what the float16 graph predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlstm_card import ModelCard, card_path, read_card
from model_export.export.keras_to_onnx import onnx_predict
from model_export.export.variant import write_variant_card
from model_export.frames import data

FP16_DIR = "fp16"
CHECK_SEQUENCES = 32
MSE_TOLERANCE = 0.01
"""The float16 graph's MSE may exceed the float32 graph's by at most this fraction."""
FP16_DESCRIPTION = (
    "fp16: the fast graph's weights and arithmetic in float16 (onnxconverter-common, "
    "input and output kept float32), for GPU tensor cores"
)


class Fp16Error(RuntimeError):
    """The float16 graph predicts worse than the gate allows."""


def fp16_path(onnx_path: Path) -> Path:
    """``convlstm.onnx`` -> ``fp16/convlstm_fp16.onnx``."""
    return onnx_path.parent / FP16_DIR / f"{onnx_path.stem}_fp16.onnx"


@dataclass(frozen=True)
class Fp16Parity:
    mse_fp32: float
    mse_fp16: float
    max_abs_diff: float
    """Largest |fp16 - fp32| over the predicted pixels."""

    @property
    def ratio(self) -> float:
        return self.mse_fp16 / self.mse_fp32 if self.mse_fp32 else float("inf")


def parity(reference: Path, fp16: Path, sequences: int) -> Fp16Parity:
    """Both graphs' next-frame MSE against the true frames of ``sequences`` test
    sequences, and how far their predictions lie apart."""
    x, y = data.inputs_and_targets(data.generate_split(sequences, "test"), every_step=False)
    p32 = onnx_predict(reference, x)
    p16 = onnx_predict(fp16, x)
    return Fp16Parity(
        mse_fp32=float(np.mean((p32 - y) ** 2)),
        mse_fp16=float(np.mean((p16 - y) ** 2)),
        max_abs_diff=float(np.abs(p16 - p32).max()),
    )


def convert(
    onnx_path: Path,
    out: Path | None = None,
    *,
    sequences: int = CHECK_SEQUENCES,
    tolerance: float = MSE_TOLERANCE,
) -> ModelCard:
    """Write the float16 variant of ``onnx_path`` and its card; returns the card. Refuses
    (``Fp16Error``, nothing written) a graph whose MSE on the test split exceeds the
    float32 graph's by more than ``tolerance``."""
    import onnx
    from onnxconverter_common import float16

    out = out or fp16_path(onnx_path)
    read_card(card_path(onnx_path))  # a source without its card fails before the work
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp")
    try:
        onnx.save(model, str(tmp))
        check = parity(onnx_path, tmp, sequences)
        if not check.ratio <= 1.0 + tolerance:
            raise Fp16Error(
                f"{out.name}: MSE {check.mse_fp16:.6g} is {check.ratio:.4f}x float32's "
                f"{check.mse_fp32:.6g} on {sequences} test sequences; at most "
                f"{1.0 + tolerance:g}x allowed"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return write_variant_card(
        onnx_path,
        out,
        kind="fp16",
        description=FP16_DESCRIPTION,
        producer="tf2onnx + onnxconverter-common",
        parity={
            "split": "test",
            "sequences": sequences,
            "mse_fp32": check.mse_fp32,
            "mse_fp16": check.mse_fp16,
            "mse_ratio": round(check.ratio, 6),
            "max_abs_diff": check.max_abs_diff,
            "tolerance_mse_ratio": 1.0 + tolerance,
        },
    )
